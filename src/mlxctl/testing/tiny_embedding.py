"""A tiny random BERT embedding model the tests build (no hub): ~200 KB.

``config.json`` (model_type bert, hidden 32, 2 layers, 2 heads, 128 positions), weights
from ``mlx_embeddings.models.bert.Model`` saved as MLX safetensors, and a WordPiece
tokenizer trained with ``tokenizers`` on a few sentences, saved through
``transformers.PreTrainedTokenizerFast`` as BERT's. ``mlx_embeddings.load`` reads it, and
so does vllm-mlx's ``--embedding-model``. Its vectors are noise, which is fine for tests
(equal texts still give equal vectors).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

MAX_POSITIONS = 128
CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": MAX_POSITIONS,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
}
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Embeddings turn text into vectors of numbers.",
    "hello world, how are you today?",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_embedding_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny embedding model to ``out_dir`` (atomically, replacing it)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_embeddings.models import bert  # type: ignore[import-untyped]
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from mlxctl.sources.gguf_convert import tokenizer_class

    out_dir = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=SPECIAL, show_progress=False
        )
        tok.train_from_iterator(SENTENCES, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        fast_class: Any = tokenizer_class()  # untyped library boundary
        fast = fast_class(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_POSITIONS,
        )  # fmt: skip
        fast.save_pretrained(str(work))
        config = {**CONFIG, "vocab_size": tok.get_vocab_size()}
        (work / "config.json").write_text(json.dumps(config, indent=2))
        mx.random.seed(seed)
        model = bert.Model(bert.ModelArgs.from_dict(config))
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(work / "model.safetensors"), weights, metadata={"format": "mlx"})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out_dir
