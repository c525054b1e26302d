"""What each tier's model is and can do, for the gateway's ``/v1/models``.

A tier that names a catalog id gets the catalog's numbers (curated, with provenance:
``docs/catalog.md``). Any other model (a directory, a hub repo, a GGUF) is read from its
own files once they are on disk: ``config.json`` for the context length, a vision tower
and an encoder architecture (an embedding model), and the chat template for tools and
reasoning. A tier's written ``context`` (what its server is told to serve) wins over
both. Nothing here fails resolution: a file that is missing or unreadable leaves the
field unknown.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlxctl.capacity.model_dir import read_model_config
from mlxctl.desired.state import ModelRef
from mlxctl.errors import NotFoundError, SpecError
from mlxctl.files import read_text_bounded
from mlxctl.runtimes.gateway import ModelInfo, Route
from mlxctl.runtimes.vllm_mlx_embeddings import NAME as EMBEDDINGS_RUNTIME
from mlxctl.spec.schema import TierSpec

# config.json keys that hold the context length, in the order models use them.
_CONTEXT_KEYS = (
    "max_position_embeddings", "max_sequence_length", "seq_length", "n_positions", "n_ctx",
    "max_seq_len",
)  # fmt: skip
# Encoder-only architectures: served for embeddings, not generation.
_EMBEDDING = re.compile(
    r"(Bert|Roberta|ModernBert|NomicBert|XLMRoberta|E5|Gte|Embedding|SentenceTransformer)"
    r"(Model|ForMaskedLM|Embeddings?)?$"
)
_EMBEDDING_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "modernbert", "nomic_bert", "distilbert", "e5", "gte"}
)
_REASONING = ("<think>", "enable_thinking", "reasoning_content")
# A chat template, a tokenizer config (its added tokens can be long): bounded reads.
MAX_TEMPLATE_BYTES = 1 << 20
MAX_TOKENIZER_CONFIG_BYTES = 16 << 20


def attach_info(
    routes: Sequence[Route], specs: Mapping[str, TierSpec], models: Mapping[str, ModelRef]
) -> list[Route]:
    """``routes`` with each tier's :class:`ModelInfo` (a route of another stack keeps its own)."""
    out = []
    for route in routes:
        spec = specs.get(route.name)
        if spec is None:
            out.append(route)
            continue
        model = models.get(route.name)
        info = describe(spec, model)
        update: dict[str, Any] = {"info": info}
        if spec.runtime == EMBEDDINGS_RUNTIME:
            # vllm-mlx locks its embedding model under the directory's path: the name
            # the gateway must send (runtimes/vllm_mlx_embeddings.py).
            update["info"] = info.model_copy(update={"embeddings": True, "chat": False})
            if model is not None:
                update["served_model"] = str(model.directory)
        out.append(route.model_copy(update=update))
    return out


def describe(spec: TierSpec, model: ModelRef | None) -> ModelInfo:
    """The tier's model: the catalog's, else its files'; the tier's ``context`` first."""
    fields: dict[str, Any] = {}
    sources: list[str] = []
    if isinstance(spec.model, str):
        fields = _from_catalog(spec.model)
        if fields:
            sources.append(f"catalog {spec.model}")
    if not fields and model is not None:
        fields = _from_files(model.directory)
        if fields:
            sources.append("config.json")
    if spec.context is not None:
        fields["context_length"] = spec.context
        sources.append("stack")
    return ModelInfo(**fields, sources=tuple(sources))


def _from_catalog(model_id: str) -> dict[str, Any]:
    from mlxctl.catalog.entries import load_entry

    try:
        entry = load_entry(model_id)
    except (NotFoundError, SpecError, OSError, ValueError):
        return {}
    caps = entry.capabilities
    return {
        "context_length": entry.context_length.value,
        "tools": caps.tool_calling,
        "reasoning": caps.reasoning_parser is not None,
        "vision": caps.vision,
    }


def _from_files(directory: Path) -> dict[str, Any]:
    config = directory / "config.json"
    try:
        stamp = config.stat().st_mtime_ns
    except OSError:
        return {}
    return dict(_read_files(str(directory), stamp))


@functools.lru_cache(maxsize=256)
def _read_files(directory: str, _stamp: int) -> tuple[tuple[str, Any], ...]:
    """Read once per directory and ``config.json`` version (resolution runs every pass)."""
    root = Path(directory)
    try:
        # Read as the memory estimate reads it: bounded, and a hostile file refused.
        config = read_model_config(root)
    except SpecError:
        return ()
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else {}
    context = next(
        (
            holder[key]
            for holder in (config, text)
            for key in _CONTEXT_KEYS
            if isinstance(holder.get(key), int) and holder[key] > 0
        ),
        None,
    )
    architectures = config.get("architectures") or []
    embeddings = config.get("model_type") in _EMBEDDING_TYPES or any(
        isinstance(a, str) and _EMBEDDING.search(a) for a in architectures
    )
    template = _template(root)
    fields: dict[str, Any] = {
        "context_length": context,
        "vision": "vision_config" in config,
        "embeddings": bool(embeddings),
        "tools": "tools" in template,
        "reasoning": any(mark in template for mark in _REASONING),
    }
    return tuple(fields.items())


def _template(root: Path) -> str:
    """The chat template: its own file, or the tokenizer config's (a list of named ones
    joined)."""
    try:
        return read_text_bounded(root / "chat_template.jinja", MAX_TEMPLATE_BYTES)
    except (OSError, ValueError):
        pass
    template = _json(root / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text_bounded(path, MAX_TOKENIZER_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
