"""The tiny test model as a GGUF file, written the way llama.cpp's converter writes one.

Built with llama.cpp's own ``gguf`` package (writer and block quantizers), from a model
directory made by :mod:`mlxctl.testing.tiny_model`: llama.* metadata, a byte-level BPE
tokenizer with merges and control tokens, the chat template, and every 2-D weight in
the tensor type asked for (F32, F16, BF16, Q8_0, Q4_0, Q4_1, or anything else, to test
refusals). Q and K are permuted as llama.cpp does for its interleaved RoPE, so the
converted model computes the same function as the source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(name: str) -> str:
    """``model.layers.1.self_attn.q_proj.weight`` -> ``blk.1.attn_q.weight``."""
    module, _, param = name.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    parts = module.split(".", 3)
    return f"blk.{parts[2]}.{_LAYER[parts[3]]}.{param}"


def permute_qk(weights: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: rows regrouped for interleaved RoPE."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def source_tensors(model_dir: Path) -> dict[str, Any]:
    """The model's weights as float32 numpy arrays under their GGUF names (Q/K permuted)."""
    import mlx.core as mx
    import numpy as np

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    weights = mx.load(str(model_dir / "model.safetensors"))
    assert isinstance(weights, dict)
    out: dict[str, Any] = {}
    for name, array in weights.items():
        data = np.array(array.astype(mx.float32))
        if ".q_proj." in name:
            data = permute_qk(data, config["num_attention_heads"])
        elif ".k_proj." in name:
            data = permute_qk(data, config["num_key_value_heads"])
        out[gguf_name(name)] = data
    return out


def write_tiny_gguf(
    model_dir: Path,
    out: Path,
    tensor_type: str = "F32",
    *,
    architecture: str = "llama",
) -> Path:
    """Write ``model_dir`` (a tiny llama) as ``out`` with its matrices in ``tensor_type``."""
    import gguf
    import numpy as np
    from gguf.quants import quantize

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    kind = gguf.GGMLQuantizationType[tensor_type]

    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    size = max([*vocab.values(), *added.values()]) + 1
    tokens = [""] * size
    types = [1] * size
    for token, index in {**vocab, **added}.items():
        tokens[index] = token
    for index in added.values():
        types[index] = 3  # control
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file():
        writer.add_chat_template(template_file.read_text(encoding="utf-8"))
    elif "chat_template" in tok_config:
        writer.add_chat_template(tok_config["chat_template"])

    for name, data in source_tensors(model_dir).items():
        if data.ndim == 1 or kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            packed = quantize(data.astype(np.float32), kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
