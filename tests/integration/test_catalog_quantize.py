"""A catalog variant no repo publishes is made here, once: its base variant (the bf16
repo) pulled like any hub model, then quantized with mlx-lm's convert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.paths import Paths
from mlxctl.sources import catalog
from mlxctl.sources.registry import DiskModelStore
from mlxctl.spec.loader import load_stack_set
from mlxctl.testing.hub import LocalHub

ENTRY = """
id: tiny
name: Tiny
family: tiny
architecture: llama
upstream: org/tiny-bf16
parameters: {value: 100000, provenance: estimated, formula: the test model's weights}
context_length: {value: 2048, provenance: estimated, formula: the test model's config}
attention: {full_layers: 2, kv_heads: 2, head_dim: 16, provenance: estimated, formula: config}
capabilities: {tool_calling: false, source: the test model}
default_variant: 4bit
variants:
  bf16:
    repo: org/tiny-bf16
    bits: 16
    disk_bytes: {value: 400000, provenance: estimated, formula: file size}
  4bit:
    source: {quantize: {from: bf16, bits: 4, group_size: 64}}
    bits: 4
    disk_bytes: {value: 100000, provenance: estimated, formula: parameters x 4.5 / 8}
"""


def test_a_variant_made_here_is_pulled_quantized_once_and_loads(
    local_hub: LocalHub, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = local_hub.commit_dir("org/tiny-bf16", tiny_model)
    entries = tmp_path / "catalog"
    entries.mkdir()
    (entries / "tiny.yaml").write_text(ENTRY)
    monkeypatch.setattr("mlxctl.catalog.entries.catalog_dir", lambda: entries)
    stack = tmp_path / "stacks" / "laptop.yaml"
    stack.parent.mkdir()
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
        "    - {name: small, runtime: mlx-lm, model: tiny, quant: 4bit}\n"
    )
    paths = Paths(config=tmp_path / "config", state=tmp_path / "state")
    [tier] = load_stack_set([stack]).tiers
    assert catalog.SOURCE.resolve_online is not None
    ref = catalog.SOURCE.resolve_online(tier, paths)
    assert (ref.source, ref.repo, ref.revision) == ("quantized", "org/tiny-bf16", commit)
    assert ref.directory == paths.models / f"tiny-4bit-{commit[:12]}"
    store = DiskModelStore(paths.models)
    assert not store.present(ref)

    out = store.prepare(ref)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["group_size"] == 64
    assert store.present(ref)
    marker = json.loads((out / ".mlxctl-source.json").read_text())
    assert marker == {"base": f"org/tiny-bf16@{commit}", "bits": 4, "group_size": 64}

    # Once: the next resolution is the same model, present, so nothing is prepared again.
    again = catalog.SOURCE.resolve(tier, paths)
    assert (again.identity, again.directory) == (ref.identity, ref.directory)
    assert store.present(again)

    from mlx_lm import generate, load

    model, tokenizer = load(str(out))
    assert isinstance(generate(model, tokenizer, prompt="Hello", max_tokens=2), str)
