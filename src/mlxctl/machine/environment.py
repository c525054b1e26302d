"""The environment a server starts with: what its runtime needs, plus what its tier declares.

A server never inherits mlxctl's whole environment: that holds whatever the user's
shell holds (cloud credentials, tokens, ``LITELLM_MASTER_KEY`` or the variable the
stack's ``masterKey`` reference names), and a model server, which runs code from a
model directory and answers anyone on loopback, needs none of it. What it does need
was read from the runtimes' sources (mlx-lm 0.32, vllm-mlx 0.5, huggingface_hub,
transformers, tokenizers, LiteLLM):

- to run at all: ``PATH``, ``HOME``, ``USER``/``LOGNAME``, the locale (``LANG``,
  ``LANGUAGE``, ``LC_*``), ``TZ``, the temporary directory, and how this Python finds
  its libraries (``PYTHONPATH``, ``PYTHONHOME``, ``VIRTUAL_ENV``, ``LD_LIBRARY_PATH``
  and macOS's ``DYLD_LIBRARY_PATH`` / ``DYLD_FALLBACK_LIBRARY_PATH``);
- to find the same model files mlxctl found: the Hugging Face cache and hub settings
  (``HF_*``, including ``HF_TOKEN`` and ``HF_HOME``, the legacy ``HUGGINGFACE_*`` and
  ``HUGGING_FACE_HUB_TOKEN``, and ``XDG_CACHE_HOME``, under which the cache lives by
  default), ``TRANSFORMERS_*`` and ``TOKENIZERS_PARALLELISM``;
- the runtimes' own knobs: ``MLX_*`` (e.g. ``MLX_BUFFER_CACHE_LIMIT``), ``MLXLM_*``,
  ``VLLM_MLX_*``, and Metal's ``METAL_*`` / ``MTL_*`` debugging variables on macOS;
- TLS trust for a hub download behind a corporate proxy: ``SSL_CERT_FILE``,
  ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``.

Proxy variables (``HTTP_PROXY``...) are left out on purpose: every request a server
or the gateway makes goes to 127.0.0.1, and a proxy without a matching ``NO_PROXY``
would send the gateway's calls to its backends away from this machine. Anything
else a server needs is declared in the tier's ``env``, which is applied last.
"""

from __future__ import annotations

from collections.abc import Mapping

INHERITED = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
        "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FALLBACK_LIBRARY_PATH",
        "XDG_CACHE_HOME", "HUGGING_FACE_HUB_TOKEN", "TOKENIZERS_PARALLELISM",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    }
)  # fmt: skip
INHERITED_PREFIXES = (
    "LC_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "MLX_",
    "MLXLM_",
    "VLLM_MLX_",
    "METAL_",
    "MTL_",
)


def inherited(name: str) -> bool:
    """Whether a variable of mlxctl's environment is passed on to the servers."""
    return name in INHERITED or name.startswith(INHERITED_PREFIXES)


def child_environment(
    parent_environ: Mapping[str, str], declared: Mapping[str, str]
) -> dict[str, str]:
    """A server's environment: the variables its runtime needs, then its declared ``env``.

    ``declared`` holds resolved values (secret references already replaced) and wins
    over anything inherited. Pure: the caller adds its own markers afterwards.
    """
    env = {name: value for name, value in parent_environ.items() if inherited(name)}
    env.update(declared)
    return env
