"""A tiny random Llama (~400 KB) that mlx-lm and vllm-mlx both load and serve in ~1 s.

Its output is noise; it exists so tests can start real servers without the hub.
The same seed gives the same weights and tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlxctl.sources.gguf import staging_dir

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "The capital of France is Paris.",
    "Hello world, how are you?",
    "Local models serve tokens.",
)
_VOCAB_SIZE = 300


def tiny_config(vocab_size: int) -> dict[str, Any]:
    """The ``config.json`` of the tiny model."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "bos_token_id": SPECIAL_TOKENS.index("<|im_start|>"),
        "eos_token_id": SPECIAL_TOKENS.index("<|im_end|>"),
    }


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mlxctl.sources.gguf import tokenizer_class

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 10, trainer)
    fast_class: Any = tokenizer_class()  # untyped library boundary
    fast = fast_class(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to ``out_dir`` (atomically, replacing it); return ``out_dir``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    config = tiny_config(len(tokenizer))
    mx.random.seed(seed)
    args_class: Any = llama.ModelArgs  # untyped library boundary
    model = llama.Model(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    with staging_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out_dir
