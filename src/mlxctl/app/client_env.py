"""What each client needs to use the gateway: ``mlxctl gateway env --client NAME``.

Each client gets its own form, printed on stdout so it can be used as is (``eval``, or
redirected into the client's config file); where it goes and how to run the client is
the :attr:`ClientEnv.hint`, printed on stderr:

- ``openai`` (the OpenAI SDKs and most OpenAI-compatible tools): ``OPENAI_BASE_URL``
  (with ``/v1``), ``OPENAI_API_KEY`` and ``OPENAI_MODEL``, as shell ``export`` lines;
- ``claude`` (Claude Code): ``ANTHROPIC_BASE_URL`` (without ``/v1``: it appends
  ``/v1/messages``), ``ANTHROPIC_AUTH_TOKEN`` (sent as ``Authorization: Bearer``),
  ``ANTHROPIC_API_KEY`` unset (it would win over the token), the model for its main
  and its background (haiku, sonnet, opus) requests, and no non-essential traffic;
- ``codex`` (Codex CLI): a ``config.toml`` snippet, a provider with ``wire_api =
  "responses"`` (the only one Codex accepts now) and a profile that selects it; the key
  travels in an environment variable the provider names (``env_key``);
- ``opencode``: an ``opencode.json`` with an OpenAI-compatible provider
  (``@ai-sdk/openai-compatible``), the key as ``{file:...}`` or ``{env:...}`` (opencode
  substitutes both) and the model's context limit when known.

The key is never printed, only a reference to it: the generated key's file (read with
``cat`` by the shell, ``{file:}`` by opencode) or the user's own ``${env:NAME}``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlxctl.desired.model_info import describe
from mlxctl.desired.resolve import master_key_ref
from mlxctl.desired.state import ModelRef
from mlxctl.errors import NotFoundError
from mlxctl.spec.schema import PathSource
from mlxctl.spec.stack_set import StackSet

CLIENTS = ("openai", "claude", "codex", "opencode")
# The variable that carries the key to Codex when the stack's key is not one already.
KEY_ENV = "MLXCTL_GATEWAY_KEY"
PROVIDER = "mlxctl"
_REF = re.compile(r"\$\{(env|file):([^}]+)\}")
# opencode needs an output limit beside the context; a model's own is rarely written.
OUTPUT_LIMIT = 8192


@dataclass(frozen=True)
class ClientEnv:
    text: str  # stdout: the settings themselves
    hint: str  # stderr: where they go, how to run the client


def base_url(stack: StackSet) -> str:
    """The gateway's URL from this machine (a wildcard bind is reached on loopback)."""
    host = stack.gateway.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{stack.gateway.port}"


def public_names(stack: StackSet) -> list[str]:
    names: list[str] = []
    for tier in stack.tiers:
        names.append(tier.spec.name)
        names.extend(tier.spec.aliases)
    return names


def pick_model(stack: StackSet, model: str | None) -> str:
    names = public_names(stack)
    if model is None:
        if not names:
            raise NotFoundError("no tier in the selected stack files: nothing to point a client at")
        return names[0]
    if model not in names:
        known = ", ".join(names)
        raise NotFoundError(f"model '{model}' is not a tier or alias here; models: {known}")
    return model


def context_length(stack: StackSet, model: str) -> int | None:
    """The model's context when the stack, the catalog or a local directory says it."""
    for tier in stack.tiers:
        spec = tier.spec
        if model != spec.name and model not in spec.aliases:
            continue
        ref = None
        if isinstance(spec.model, PathSource):
            directory = Path(spec.model.path).expanduser()
            if not directory.is_absolute():
                directory = Path(tier.file).parent / directory
            ref = ModelRef("path", f"path:{directory}", directory, str(directory))
        return describe(spec, ref).context_length
    return None


def shell_key(ref: str) -> str:
    """The key reference as a shell word: ``$(cat 'FILE')`` or ``${NAME}``, in double quotes."""
    parts: list[str] = []
    last = 0
    for match in _REF.finditer(ref):
        parts.append(_dq(ref[last : match.start()]))
        kind, value = match.groups()
        parts.append(f"${{{value}}}" if kind == "env" else f"$(cat {shlex.quote(value)})")
        last = match.end()
    parts.append(_dq(ref[last:]))
    return '"' + "".join(parts) + '"'


def _dq(text: str) -> str:
    return re.sub(r'(["\\$`])', r"\\\1", text)


def render(client: str, stack: StackSet, state_dir: Path, model: str | None = None) -> ClientEnv:
    """The settings ``client`` needs to reach this stack's gateway with ``model``."""
    if client not in CLIENTS:
        raise NotFoundError(f"unknown client '{client}'; clients: {', '.join(CLIENTS)}")
    name = pick_model(stack, model)
    url = base_url(stack)
    ref = master_key_ref(stack, state_dir)
    if client == "openai":
        return _openai(url, ref, name)
    if client == "claude":
        return _claude(url, ref, name)
    if client == "codex":
        return _codex(url, ref, name, context_length(stack, name))
    return _opencode(url, ref, name, public_names(stack), stack)


def _exports(pairs: Sequence[tuple[str, str]], unset: Sequence[str] = ()) -> str:
    lines = [f"unset {name}" for name in unset]
    lines += [f"export {key}={value}" for key, value in pairs]
    return "\n".join(lines) + "\n"


def _openai(url: str, ref: str, name: str) -> ClientEnv:
    text = _exports(
        [
            ("OPENAI_BASE_URL", shlex.quote(f"{url}/v1")),
            ("OPENAI_API_KEY", shell_key(ref)),
            ("OPENAI_MODEL", shlex.quote(name)),
        ]
    )
    hint = (
        'eval "$(mlxctl gateway env --client openai)": the OpenAI SDKs read OPENAI_BASE_URL '
        "and OPENAI_API_KEY; pass model=$OPENAI_MODEL"
    )
    return ClientEnv(text, hint)


def _claude(url: str, ref: str, name: str) -> ClientEnv:
    model = shlex.quote(name)
    text = _exports(
        [
            ("ANTHROPIC_BASE_URL", shlex.quote(url)),
            ("ANTHROPIC_AUTH_TOKEN", shell_key(ref)),
            ("ANTHROPIC_MODEL", model),
            # Claude Code's background and sub-agent requests name these: the same tier.
            ("ANTHROPIC_DEFAULT_OPUS_MODEL", model),
            ("ANTHROPIC_DEFAULT_SONNET_MODEL", model),
            ("ANTHROPIC_DEFAULT_HAIKU_MODEL", model),
            ("ANTHROPIC_SMALL_FAST_MODEL", model),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ],
        unset=("ANTHROPIC_API_KEY",),
    )
    hint = (
        'eval "$(mlxctl gateway env --client claude)" then: claude (or claude -p "PROMPT"); '
        "it needs the gateway's /v1/messages route"
    )
    return ClientEnv(text, hint)


def _codex(url: str, ref: str, name: str, context: int | None) -> ClientEnv:
    own = re.fullmatch(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", ref)
    env_key = own.group(1) if own else KEY_ENV
    lines = [
        # Codex sends its built-in web_search tool unless told not to, and no local model
        # runs it: the gateway answers 400. A top-level key: before any [table].
        "# at the top of config.toml, before any [table]:",
        'web_search = "disabled"',
        "",
        f"[model_providers.{PROVIDER}]",
        f'name = "{PROVIDER}"',
        f"base_url = {json.dumps(url + '/v1')}",
        f'env_key = "{env_key}"',
        'wire_api = "responses"',
        "",
        f"[profiles.{PROVIDER}]",
        f"model = {json.dumps(name)}",
        f'model_provider = "{PROVIDER}"',
    ]
    if context is not None:
        lines.append(f"model_context_window = {context}")
    export = "" if own else f"export {KEY_ENV}={shell_key(ref)}; "
    hint = (
        "add this to $CODEX_HOME/config.toml (default ~/.codex/config.toml), then: "
        f"{export}codex --profile {PROVIDER}"
    )
    return ClientEnv("\n".join(lines) + "\n", hint)


def _opencode_key(ref: str) -> str:
    return _REF.sub(lambda m: f"{{{m.group(1)}:{m.group(2)}}}", ref)


def _opencode(url: str, ref: str, name: str, names: list[str], stack: StackSet) -> ClientEnv:
    models: dict[str, dict[str, object]] = {}
    for public in names:
        entry: dict[str, object] = {"name": f"{public} (mlxctl)"}
        context = context_length(stack, public)
        if context is not None:
            entry["limit"] = {"context": context, "output": min(OUTPUT_LIMIT, context)}
        models[public] = entry
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "mlxctl gateway",
                "options": {"baseURL": f"{url}/v1", "apiKey": _opencode_key(ref)},
                "models": models,
            }
        },
        "model": f"{PROVIDER}/{name}",
    }
    hint = (
        "save as opencode.json in your project (or ~/.config/opencode/opencode.json), then: "
        f'opencode run "PROMPT" (model {PROVIDER}/{name})'
    )
    return ClientEnv(json.dumps(config, indent=2) + "\n", hint)
