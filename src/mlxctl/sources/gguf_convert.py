"""Convert a llama-architecture GGUF file into an MLX model directory.

The result loads in both mlx-lm and vllm-mlx: ``model.safetensors`` (metadata
``{"format": "mlx"}``), ``config.json`` and Hugging Face tokenizer files.

``mlx.core.load`` reads GGUF directly and returns Q4_0/Q4_1/Q8_0 tensors already in
MLX's affine quantized form (``weight`` packed into uint32 words, ``scales`` and
``biases`` per group of 32), so conversion is a renaming plus a config. llama.cpp
stores Q and K permuted for interleaved RoPE, hence ``rope_traditional: true``.

Tensors may be quantized with different bit widths (SmolLM2's Q4_1 file keeps the
token embedding at 8 bits), so ``config.json`` names every quantized module with its
own ``group_size``/``bits``, computed from its packed shape, beside a global default.

The pure helpers (:func:`map_tensor_name`, :func:`quant_params`,
:func:`quantization_config`, :func:`config_from_metadata`, :func:`special_token_ids`)
work on names, shapes and plain values and are unit-tested without a GGUF file.
Heavy imports (mlx, tokenizers, transformers) happen inside functions only.

The GGUF modules: :mod:`~mlxctl.sources.gguf_file` is the model source (``model:
{gguf: FILE}``), :mod:`~mlxctl.sources.gguf_header` reads and checks the header, and
this one converts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlxctl.errors import MlxctlError, echo

# Bump when the output of the converter changes, so converted copies are redone.
CONVERTER_VERSION = 1
# The marker file a converted directory carries: where it came from and how.
SOURCE_MARKER = ".mlxctl-source.json"
# The marker is a few hundred bytes written by mlxctl; a bigger one is not ours.
MAX_MARKER_BYTES = 64 * 1024
# Every GGUF block format that mlx.core.load turns into MLX quantized tensors
# (Q4_0, Q4_1, Q8_0) packs 32 values per block: one scale/bias per 32 columns.
GGUF_BLOCK_SIZE = 32
_VALID_BITS = frozenset({2, 3, 4, 5, 6, 8})

_LAYER_MODULES: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_MODULES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_PARAMS = frozenset({"weight", "scales", "biases"})
_NO_ADVISORY = "TRANSFORMERS_NO_ADVISORY_WARNINGS"

# GGUF token types (llama.cpp ``llama_token_type``).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# ``tokenizer.ggml.pre`` values whose pre-tokenizer is GPT-2's byte-level regex...
_PRE_GPT2 = frozenset({"default", "gpt2", "gpt-2"})
# ...the same regex after splitting every digit on its own (StarCoder family) ...
_PRE_DIGITS = frozenset({"smollm", "starcoder", "refact", "codeshell", "command-r"})
# ...and Llama 3's regex (digits in runs of up to three).
_PRE_LLAMA3 = frozenset({"llama-bpe", "llama3", "smaug-bpe"})
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# The architectures whose GGUF layout this converter maps (llama.cpp's "llama" covers
# Llama 1-3, Mistral 7B, SmolLM, TinyLlama and their fine-tunes).
ARCHITECTURES = frozenset({"llama"})
# Tensor types converted: plain floats, and the block formats mlx.core.load turns into
# MLX affine-quantized tensors. Everything else (K-quants, I-quants, Q5_x) is refused.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


class GgufError(MlxctlError):
    """The GGUF file cannot be converted (unsupported architecture, tensor or tokenizer)."""


def check_supported(gguf_path: Path) -> dict[str, str]:
    """Check the header (no tensor data) and refuse what cannot convert, in one line.

    Returns tensor name -> type name. The header is walked and bounds-checked by
    :func:`mlxctl.sources.gguf_header.read_header` before anything else reads the file
    (``GGUFReader``, ``mlx.core.load``); done before ``mlx.core.load``, whose error for
    an unknown block format ("gguf_tensor_to_f16 failed") names neither the type nor
    the tensor.
    """
    from mlxctl.sources.gguf_header import GgufHeaderError, read_header

    try:
        header = read_header(gguf_path)
    except GgufHeaderError as exc:
        raise GgufError(str(exc)) from None
    arch = header.metadata.get("general.architecture", "")
    if arch not in ARCHITECTURES:
        raise GgufError(
            f"unsupported GGUF architecture {echo(arch)} in {gguf_path.name} "
            f"(mlxctl converts: {', '.join(sorted(ARCHITECTURES))})"
        )
    types = {t.name: t.type_name for t in header.tensors}
    for name, kind in types.items():
        if kind not in TENSOR_TYPES:
            raise GgufError(
                f"unsupported GGUF tensor type {kind} ({name} in {gguf_path.name}); "
                f"mlxctl converts {', '.join(TENSOR_TYPES)}"
            )
    return types


def _exact_bf16(gguf_path: Path, names: set[str]) -> dict[str, Any]:
    """BF16 tensors read bit-exactly (``mlx.core.load`` narrows them to float16)."""
    import mlx.core as mx
    import numpy as np
    from gguf import GGUFReader

    out: dict[str, Any] = {}
    for tensor in GGUFReader(str(gguf_path)).tensors:
        if tensor.name in names:
            raw = np.ascontiguousarray(tensor.data).view(np.uint16)
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            out[tensor.name] = mx.array(raw.reshape(shape)).view(mx.bfloat16)
    return out


# --------------------------------------------------------------------------- pure parts


def map_tensor_name(name: str) -> str:
    """Map a GGUF tensor name to its mlx-lm llama name.

    ``blk.3.attn_q.scales`` -> ``model.layers.3.self_attn.q_proj.scales``.
    """
    module, _, param = name.rpartition(".")
    if not module or param not in _PARAMS:
        raise GgufError(f"unsupported GGUF tensor {name!r}")
    if module in _TOP_MODULES:
        return f"{_TOP_MODULES[module]}.{param}"
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_MODULES:
        return f"model.layers.{int(parts[1])}.{_LAYER_MODULES[parts[2]]}.{param}"
    raise GgufError(f"unsupported GGUF tensor {name!r}")


def quant_params(
    weight_shape: Sequence[int],
    scales_shape: Sequence[int],
    *,
    group_size: int = GGUF_BLOCK_SIZE,
) -> dict[str, int]:
    """``{"group_size", "bits"}`` of one quantized matrix from its packed shapes.

    ``in_features = groups * group_size`` and ``bits = packed_words * 32 / in_features``.
    """
    if len(weight_shape) < 1 or len(scales_shape) < 1:
        raise GgufError(f"quantized tensor without columns: {weight_shape} / {scales_shape}")
    words, groups = int(weight_shape[-1]), int(scales_shape[-1])
    in_features = groups * group_size
    bits, remainder = divmod(words * 32, in_features) if in_features else (0, 1)
    if remainder or bits not in _VALID_BITS:
        raise GgufError(
            f"cannot infer the bit width of a {list(weight_shape)} weight "
            f"with {list(scales_shape)} scales"
        )
    return {"group_size": group_size, "bits": bits}


def quantization_config(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The ``quantization`` entry of ``config.json`` for weights of these shapes.

    ``shapes`` maps (already renamed) tensor names to shapes. Every module with
    ``scales`` gets its own entry (mlx-lm and vllm-mlx consult per-module entries
    before the default); the default is the most common setting. Empty if nothing is
    quantized.
    """
    per_module: dict[str, dict[str, int]] = {}
    for name in sorted(shapes):
        if not name.endswith(".scales"):
            continue
        module = name.removesuffix(".scales")
        weight = shapes.get(f"{module}.weight")
        if weight is None:
            raise GgufError(f"quantized tensor {module!r} has scales but no weight")
        per_module[module] = quant_params(weight, shapes[name])
    if not per_module:
        return {}
    counts = Counter((p["group_size"], p["bits"]) for p in per_module.values())
    # Most common first; ties go to the smaller bit width, so the result is stable.
    (group_size, bits), _ = min(counts.items(), key=lambda item: (-item[1], item[0][1]))
    config: dict[str, Any] = {"group_size": group_size, "bits": bits}
    config.update(per_module)
    return config


def _plain(value: Any) -> Any:
    """A metadata value as a Python scalar/list (``mlx.core.load`` gives 0-d arrays)."""
    if isinstance(value, str | int | float | bool | list):
        return value
    if hasattr(value, "ndim") and hasattr(value, "item") and value.ndim == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _meta_int(metadata: Mapping[str, Any], key: str, default: int | None = None) -> int:
    if key not in metadata:
        if default is None:
            raise GgufError(f"GGUF metadata lacks {key!r}")
        return default
    return int(_plain(metadata[key]))


def _shortest_float32(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (``1e-05``, not ``9.99e-06``)."""
    try:
        target = struct.pack("<f", value)
    except OverflowError:
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == target:
            return candidate
    return value


def _meta_float(metadata: Mapping[str, Any], key: str, default: float) -> float:
    """A float metadata value; GGUF stores float32, so print it as float32 would."""
    if key not in metadata:
        return default
    return _shortest_float32(float(_plain(metadata[key])))


def config_from_metadata(
    metadata: Mapping[str, Any],
    *,
    tie_word_embeddings: bool = True,
    quantization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An mlx-lm ``config.json`` for a llama GGUF, from its ``llama.*`` metadata."""
    arch = _plain(metadata.get("general.architecture", ""))
    if arch != "llama":
        raise GgufError(f"unsupported GGUF architecture {arch!r} (only 'llama' converts)")
    scaling = _plain(metadata.get("llama.rope.scaling.type", "none"))
    if scaling not in ("none", ""):
        raise GgufError(f"unsupported RoPE scaling {scaling!r}")
    hidden = _meta_int(metadata, "llama.embedding_length")
    heads = _meta_int(metadata, "llama.attention.head_count")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_default = len(tokens) if isinstance(tokens, list) else None
    head_dim = _meta_int(metadata, "llama.attention.key_length", hidden // heads)
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _meta_int(metadata, "llama.block_count"),
        "intermediate_size": _meta_int(metadata, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _meta_int(metadata, "llama.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _meta_float(metadata, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _meta_float(metadata, "llama.rope.freq_base", 10000.0),
        "rope_traditional": True,
        "vocab_size": _meta_int(metadata, "llama.vocab_size", vocab_default),
        "max_position_embeddings": _meta_int(metadata, "llama.context_length", 2048),
        "tie_word_embeddings": tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key, gguf_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if gguf_key in metadata:
            config[key] = _meta_int(metadata, gguf_key)
    if quantization:
        config["quantization"] = dict(quantization)
    return config


def special_token_ids(token_types: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(control, user_defined)`` token ids from ``tokenizer.ggml.token_type``."""
    control = [i for i, kind in enumerate(token_types) if kind == TOKEN_TYPE_CONTROL]
    user = [i for i, kind in enumerate(token_types) if kind == TOKEN_TYPE_USER_DEFINED]
    return control, user


def parse_merges(merges: Sequence[str]) -> list[tuple[str, str]]:
    """GGUF merges (``"a b"``) as pairs. Byte-level tokens never contain a space."""
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise GgufError(f"malformed BPE merge {merge!r}")
        pairs.append((left, right))
    return pairs


# --------------------------------------------------------------------------- files


def file_sha256(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``out_dir``, published there on success.

    Readers never see a half-written ``out_dir``: the directory is filled under a
    hidden temporary name on the same filesystem and renamed into place. An existing
    ``out_dir`` is moved aside first and removed after the swap. On error the
    temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a model directory is ordinary
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, replacing any previous copy."""
    old: Path | None = None
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        old.rmdir()
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None and not out_dir.exists():
            os.rename(old, out_dir)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def read_source_marker(model_dir: Path) -> dict[str, Any] | None:
    """The marker a converted directory carries, or None if absent or unreadable (not a
    regular file, over :data:`MAX_MARKER_BYTES`, not JSON): then the model converts again."""
    from mlxctl.files import read_text_bounded

    try:
        data = json.loads(read_text_bounded(model_dir / SOURCE_MARKER, MAX_MARKER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- conversion


def tokenizer_class() -> Any:
    """``transformers.PreTrainedTokenizerFast``, imported without the advisory it prints.

    Without PyTorch (deliberately not installed), importing transformers prints
    "PyTorch was not found..." into the user's terminal; mlxctl needs only the
    tokenizer class, which works without it. The switch transformers reads for that
    is set for the import alone, so the servers mlxctl starts never inherit it.
    """
    previous = os.environ.get(_NO_ADVISORY)
    os.environ[_NO_ADVISORY] = "1"
    try:
        from transformers import PreTrainedTokenizerFast
    finally:
        if previous is None:
            del os.environ[_NO_ADVISORY]
        else:
            os.environ[_NO_ADVISORY] = previous
    return PreTrainedTokenizerFast


def build_tokenizer(metadata: Mapping[str, Any]) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` from GGUF ``tokenizer.ggml.*`` metadata.

    Only byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is supported. Control
    tokens become special tokens (``<|im_start|>`` must encode to one id).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    kind = _plain(metadata.get("tokenizer.ggml.model", ""))
    if kind != "gpt2":
        raise GgufError(f"unsupported GGUF tokenizer {kind!r} (only byte-level BPE 'gpt2')")
    tokens: list[str] = list(_plain(metadata["tokenizer.ggml.tokens"]))
    merges = parse_merges(list(_plain(metadata.get("tokenizer.ggml.merges", []))))
    types: list[int] = [int(t) for t in _plain(metadata.get("tokenizer.ggml.token_type", []))]
    if types and len(types) != len(tokens):
        raise GgufError("GGUF token_type and tokens differ in length")

    vocab = {token: index for index, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = str(_plain(metadata.get("tokenizer.ggml.pre", "default")))
    if pre in _PRE_GPT2:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _PRE_DIGITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _PRE_LLAMA3:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise GgufError(f"unsupported GGUF pre-tokenizer {pre!r}")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    control, user = special_token_ids(types)
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    if user:
        tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])

    def token(key: str) -> str | None:
        if key not in metadata:
            return None
        index = int(_plain(metadata[key]))
        return tokens[index] if 0 <= index < len(tokens) else None

    fast_class: Any = tokenizer_class()  # untyped library boundary
    fast = fast_class(
        tokenizer_object=tok,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
        clean_up_tokenization_spaces=False,
    )
    template = metadata.get("tokenizer.chat_template")
    if template:
        fast.chat_template = str(_plain(template))
    return fast


def _convert_gguf_unlocked(
    gguf_path: Path,
    out_dir: Path,
    *,
    source_sha256: str | None = None,
    marker_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Convert ``gguf_path`` into an MLX model directory at ``out_dir``; return ``out_dir``.

    The directory appears atomically (see :func:`staging_dir`) and carries
    :data:`SOURCE_MARKER` with the source's sha256 (computed unless given) and
    :data:`CONVERTER_VERSION`.
    """
    import mlx.core as mx

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise GgufError(f"GGUF file not found: {gguf_path}")
    types = check_supported(gguf_path)
    try:
        result: Any = mx.load(str(gguf_path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise GgufError(f"cannot read GGUF {gguf_path}: {exc}") from exc
    loaded: dict[str, Any] = result[0]
    metadata: dict[str, Any] = result[1]
    loaded.update(_exact_bf16(gguf_path, {n for n, kind in types.items() if kind == "BF16"}))

    weights: dict[str, Any] = {map_tensor_name(name): array for name, array in loaded.items()}
    shapes = {name: tuple(array.shape) for name, array in weights.items()}
    tied = "lm_head.weight" not in weights
    config = config_from_metadata(
        metadata, tie_word_embeddings=tied, quantization=quantization_config(shapes)
    )
    _check_complete(shapes, config)
    tokenizer = build_tokenizer(metadata)
    digest = source_sha256 or file_sha256(gguf_path)

    with staging_dir(out_dir) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        marker = {
            "source": gguf_path.name,
            "sha256": digest,
            "converter_version": CONVERTER_VERSION,
            **(marker_extra or {}),
        }
        (tmp / SOURCE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _check_complete(shapes: Mapping[str, Sequence[int]], config: Mapping[str, Any]) -> None:
    """Fail early (with one line) when a layer's tensors are missing."""
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    for layer in range(int(config["num_hidden_layers"])):
        required += [f"model.layers.{layer}.{module}.weight" for module in _LAYER_MODULES.values()]
    missing = [name for name in required if name not in shapes]
    if missing:
        raise GgufError(f"GGUF lacks {len(missing)} tensors, first {missing[0]!r}")


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    source_sha256: str | None = None,
    marker_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Convert ``gguf_path`` into an MLX model directory at ``out_dir`` (see
    :func:`_convert_gguf_unlocked`), one conversion at a time in this process."""
    from mlxctl.sources.base import CONVERSIONS

    with CONVERSIONS:
        return _convert_gguf_unlocked(
            gguf_path, out_dir, source_sha256=source_sha256, marker_extra=marker_extra
        )
