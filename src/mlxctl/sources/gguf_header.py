"""The GGUF header, read where it enters mlxctl: every count, length and size checked
against the file before anything is built from it.

A GGUF file is a model someone else made (a download, a hub repo). Its header holds
counts and lengths that readers trust: the ``gguf`` package's ``GGUFReader`` walks
``kv_count`` entries and ``2**60``-long arrays until an ``IndexError``, ``mlx.core.load``
is C++, and the converter builds a list per ``llama.block_count`` layer (4e9 layers
took 7.7 GB). So the header is walked once here, over a read-only memory map (no
copy of the file in memory), with each value checked before it is used:

- a count or length must fit in the bytes left (an entry takes at least its fixed
  part), and stay under a sane bound;
- a tensor has 1 to 4 dimensions, each at least 1, a known type whose block size
  divides its first dimension, and its data lies inside the file;
- the ``llama.*`` sizes the converter uses are within bounds (at least 1 layer, head,
  dimension; heads dividing the embedding; at most :data:`MAX_LAYERS` layers, no more
  than the tensors could hold).

Anything else is a :class:`~mlxctl.sources.gguf_convert.GgufError`: one line naming the file
and the field. Only then do ``GGUFReader`` and ``mlx.core.load`` see the file.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxctl.errors import MlxctlError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
# Bounds far above any real model (Llama 3.1 405B: 126 layers, 128 heads, 16384 wide,
# ~1100 tensors, ~30 metadata keys, a 128k-token vocabulary).
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 16 << 20
MAX_ARRAY_ITEMS = 1 << 24
MAX_DIMS = 4
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20
MAX_HEADS = 1 << 14
MAX_CONTEXT = 1 << 24
MAX_VOCAB = 1 << 24

# GGUF value types: (struct format, size); 8 is a string, 9 an array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})


class GgufHeaderError(MlxctlError):
    """The GGUF header is malformed or out of bounds (one line: file, field, why)."""


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array: its item type and length (items are not kept)."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    type_name: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    """What the converter checks before loading: metadata scalars, arrays' lengths,
    and every tensor's name, shape, type and byte range."""

    version: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()


class _Cursor:
    """Reads little-endian values from a buffer, refusing to read past its end."""

    def __init__(self, data: mmap.mmap | bytes, path: Path) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0
        self.path = path

    def fail(self, what: str, why: str) -> GgufHeaderError:
        return GgufHeaderError(f"GGUF {self.path}: {what}: {why}")

    @property
    def left(self) -> int:
        return self.size - self.pos

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        if size > self.left:
            raise self.fail(what, f"the file ends at byte {self.size}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def count(self, what: str, item_min: int, bound: int) -> int:
        """A uint64 count of items that take at least ``item_min`` bytes each."""
        n = int(self.scalar("<Q", 8, what))
        if n > bound:
            raise self.fail(what, f"{n} is over the {bound} allowed")
        if n * item_min > self.left:
            raise self.fail(what, f"{n} entries cannot fit in the {self.left} bytes left")
        return n

    def string(self, what: str, bound: int = MAX_STRING_BYTES) -> str:
        n = self.count(f"{what} (length)", 1, bound)
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, "not UTF-8") from None

    def skip_string(self, what: str) -> None:
        n = self.count(f"{what} (length)", 1, MAX_STRING_BYTES)
        self.pos += n


def _value(cur: _Cursor, kind: int, key: str) -> Any:
    """One metadata value: a scalar, a string, or an array (of scalars or strings only:
    no real model nests arrays, and refusing them keeps the walk flat)."""
    if kind in _SCALARS:
        fmt, size = _SCALARS[kind]
        return cur.scalar(fmt, size, key)
    if kind == _STRING:
        return cur.string(key)
    if kind != _ARRAY:
        raise cur.fail(key, f"value type {kind} is not a GGUF type")
    item = int(cur.scalar("<I", 4, f"{key} (item type)"))
    if item == _ARRAY:
        raise cur.fail(key, "an array of arrays")
    if item not in _SCALARS and item != _STRING:
        raise cur.fail(key, f"array item type {item} is not a GGUF scalar or string")
    item_min = _SCALARS[item][1] if item in _SCALARS else 8
    n = cur.count(f"{key} (array length)", item_min, MAX_ARRAY_ITEMS)
    if item == _STRING:
        for i in range(n):
            cur.skip_string(f"{key}[{i}]")
    else:
        cur.pos += n * item_min
    return ArrayValue(item, n)


def _tensor_types() -> dict[int, tuple[str, int, int]]:
    """GGML type id -> (name, values per block, bytes per block), from the gguf package."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}


def _tensor(cur: _Cursor, index: int, types: Mapping[int, tuple[str, int, int]]) -> TensorInfo:
    name = cur.string(f"tensor #{index} name", MAX_KEY_BYTES)
    what = f"tensor {name!r}"
    n_dims = int(cur.scalar("<I", 4, f"{what} dimensions"))
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(what, f"{n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    dims = tuple(int(cur.scalar("<Q", 8, f"{what} shape")) for _ in range(n_dims))
    if min(dims) < 1 or max(dims) > MAX_ARRAY_ITEMS * 16:
        raise cur.fail(what, f"shape {list(dims)} has a zero or out-of-bounds dimension")
    raw_type = int(cur.scalar("<I", 4, f"{what} type"))
    if raw_type not in types:
        raise cur.fail(what, f"tensor type {raw_type} is not a GGML type")
    type_name, block, block_bytes = types[raw_type]
    if dims[0] % block:
        raise cur.fail(what, f"first dimension {dims[0]} is not a multiple of {block}")
    elements = 1
    for d in dims:
        elements *= d
    offset = int(cur.scalar("<Q", 8, f"{what} offset"))
    return TensorInfo(name, dims, type_name, offset, elements // block * block_bytes)


def read_header(path: Path) -> GgufHeader:
    """Walk and check the header of the GGUF file ``path`` (see the module docstring).

    Opened without blocking and checked to be a regular file first (a FIFO named as a
    model must not hang a reconcile), then mapped read-only.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise GgufHeaderError(f"cannot read GGUF {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GgufHeaderError(f"GGUF {path}: not a regular file")
        if info.st_size < 24:
            raise GgufHeaderError(f"GGUF {path}: header: {info.st_size} bytes, too short for one")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
            return _walk(_Cursor(data, path))
    except OSError as exc:
        raise GgufHeaderError(f"cannot read GGUF {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _walk(cur: _Cursor) -> GgufHeader:
    if bytes(cur.data[:4]) != MAGIC:
        raise cur.fail("magic", "not a GGUF file")
    cur.pos = 4
    version = int(cur.scalar("<I", 4, "version"))
    if version not in VERSIONS:
        raise cur.fail(
            "version", f"{version} (mlxctl reads GGUF {' and '.join(map(str, VERSIONS))})"
        )
    tensor_count = int(cur.scalar("<Q", 8, "tensor_count"))
    kv_count = cur.count("kv_count", 8 + 4 + 1, MAX_KV)
    if tensor_count > MAX_TENSORS or tensor_count * (8 + 4 + 8 + 4 + 8) > cur.left:
        raise cur.fail("tensor_count", f"{tensor_count} tensors cannot fit in {cur.size} bytes")
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES)
        kind = int(cur.scalar("<I", 4, f"{key} (type)"))
        metadata[key] = _value(cur, kind, key)
    types = _tensor_types()
    tensors = tuple(_tensor(cur, i, types) for i in range(tensor_count))
    alignment = metadata.get("general.alignment", 32)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not (1 <= alignment <= 1 << 20 and alignment & (alignment - 1) == 0)
    ):
        raise cur.fail("general.alignment", f"{alignment!r} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    for t in tensors:
        if start + t.offset + t.nbytes > cur.size:
            raise cur.fail(
                f"tensor {t.name!r}",
                f"its {t.nbytes} bytes at offset {t.offset} lie past the end of the file",
            )
    header = GgufHeader(version, metadata, tensors)
    check_llama(header, cur)
    return header


def _int(header: GgufHeader, cur: _Cursor, key: str, low: int, high: int) -> int | None:
    value = header.metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise cur.fail(key, f"{value!r} is not an integer")
    if not low <= value <= high:
        raise cur.fail(key, f"{value} is out of bounds ({low} to {high})")
    return value


def check_llama(header: GgufHeader, cur: _Cursor) -> None:
    """The ``llama.*`` sizes the converter builds from: present ones within bounds."""
    if header.metadata.get("general.architecture") != "llama":
        return  # refused by name afterwards (check_supported)
    layers = _int(header, cur, "llama.block_count", 1, MAX_LAYERS)
    if layers is not None and layers > len(header.tensors):
        raise cur.fail(
            "llama.block_count",
            f"{layers} layers, but the file holds {len(header.tensors)} tensors",
        )
    width = _int(header, cur, "llama.embedding_length", 1, MAX_WIDTH)
    heads = _int(header, cur, "llama.attention.head_count", 1, MAX_HEADS)
    kv_heads = _int(header, cur, "llama.attention.head_count_kv", 1, MAX_HEADS)
    key_length = _int(header, cur, "llama.attention.key_length", 1, MAX_WIDTH)
    _int(header, cur, "llama.feed_forward_length", 1, MAX_WIDTH * 8)
    _int(header, cur, "llama.context_length", 1, MAX_CONTEXT)
    _int(header, cur, "llama.vocab_size", 1, MAX_VOCAB)
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise cur.fail("llama.attention.head_count_kv", f"{kv_heads} does not divide {heads} heads")
    if width is not None and heads is not None and key_length is None and width % heads:
        raise cur.fail(
            "llama.attention.head_count", f"{heads} heads do not divide the width {width}"
        )
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArrayValue) and not 1 <= tokens.length <= MAX_VOCAB:
        raise cur.fail("tokenizer.ggml.tokens", f"{tokens.length} tokens")
