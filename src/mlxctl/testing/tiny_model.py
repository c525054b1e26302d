"""A tiny random Llama (~400 KB) that mlx-lm and vllm-mlx both load and serve in ~1 s.

Its output is noise; it exists so tests can start real servers without the hub.
The same seed gives the same weights and tokenizer.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

from mlxctl.sources.gguf_convert import staging_dir

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


def tiny_config(vocab_size: int, *, context: int = 2048) -> dict[str, Any]:
    """The ``config.json`` of the tiny model (``context``: its ``max_position_embeddings``)."""
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
        "max_position_embeddings": context,
        "bos_token_id": SPECIAL_TOKENS.index("<|im_start|>"),
        "eos_token_id": SPECIAL_TOKENS.index("<|im_end|>"),
    }


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mlxctl.sources.gguf_convert import tokenizer_class

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


def build_tiny_tokenizer(out_dir: Path) -> Path:
    """Write only the tiny model's tokenizer files to ``out_dir``; return its
    ``tokenizer.json`` (what the gateway counts prompts with)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _train_tokenizer().save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"


def build_tiny_model(out_dir: Path, *, seed: int = 0, context: int = 2048) -> Path:
    """Write the tiny model to ``out_dir`` (atomically, replacing it); return ``out_dir``.

    Coding agents send 10k+ token prompts: give them ``context=131072``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    config = tiny_config(len(tokenizer), context=context)
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


TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
# Names the tool-call markers the way mlx-lm recognises its ``json_tools`` format; the
# branch never renders.
_TOOL_TEMPLATE = (
    CHATML_TEMPLATE + "{% if false %}<tool_call>{{ tool_call.name }}</tool_call>{% endif %}"
)


def build_tool_call_model(out_dir: Path, *, context: int = 2048) -> Path:
    """A tiny model whose every answer is one tool call: ``get_weather(city="Paris")``.

    Its layers add nothing (their output projections are zero), so each next token
    depends on the last one alone, and its (untied) output layer is a successor table:
    end of prompt -> ``<tool_call>`` -> the call's JSON (one added token) ->
    ``</tool_call>`` -> end of turn. mlx_lm.server parses that as a tool call, which lets
    tests prove tool calls pass through the gateway with a real server and no network.
    """
    body = json.dumps(TOOL_CALL)
    return _build_chain_model(
        out_dir, ["<tool_call>", body, "</tool_call>"], _TOOL_TEMPLATE, context=context
    )


ANSWER = "Hello from the tiny model."


def build_answer_model(out_dir: Path, text: str = ANSWER, *, context: int = 2048) -> Path:
    """A tiny model whose every answer is ``text``, then the end of its turn.

    Built as :func:`build_tool_call_model` is (``text`` is one added token), so a
    client that treats an answer cut at ``max_tokens`` as an error (Claude Code does)
    gets a whole answer from a model that costs nothing to run, whatever its prompt.
    """
    return _build_chain_model(out_dir, [text], CHATML_TEMPLATE, context=context)


def build_repeat_model(out_dir: Path, text: str, *, context: int = 2048) -> Path:
    """A tiny model whose every answer is ``text`` again and again, never ending its turn:
    each stream runs to its ``max_tokens`` (``finish_reason`` ``length``), one ``text`` a
    token and a chunk.

    Built as :func:`build_tool_call_model` is (``text`` is one added token). A random
    model's greedy answer may sample its end of turn at any length; this one's length is
    what the test asks (the planned-restart test sizes its streams in seconds of
    generation on this machine).
    """
    return _build_chain_model(out_dir, [text], CHATML_TEMPLATE, context=context, repeat=True)


def _build_chain_model(
    out_dir: Path, answer: list[str], template: str, *, context: int, repeat: bool = False
) -> Path:
    """A tiny model that answers the tokens ``answer`` (each added to its vocabulary),
    then ends its turn (``repeat``: then answers the last one forever), after any prompt
    of its chat template."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import llama

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    tokenizer.add_tokens(answer)
    tokenizer.chat_template = template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "weather?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tokenizer.encode(text, add_special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in answer]
    end = ids[-1] if repeat else int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    chain = [int(prompt[-1]), *ids, end]
    config = {**tiny_config(len(tokenizer), context=context), "tie_word_embeddings": False}
    mx.random.seed(0)
    args_class: Any = llama.ModelArgs  # untyped library boundary
    model = llama.Model(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    embed = mx.random.normal((vocab, hidden)) * 0.01
    head = mx.random.normal((vocab, hidden)) * 0.01
    for step, (token, successor) in enumerate(pairwise(chain)):
        embed[token] = mx.zeros((hidden,))
        embed[token, step] = 1.0
        head[successor, step] = 10.0
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    weights["model.embed_tokens.weight"] = embed
    weights["lm_head.weight"] = head
    model.update(tree_unflatten(list(weights.items())))
    mx.eval(weights)
    with staging_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out_dir
