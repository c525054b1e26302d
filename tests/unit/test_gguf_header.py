"""Hostile GGUF headers (issue 15 row 10): every count, length, dimension and size is
checked against the file and sane bounds before anything is built from it; one line
naming the file and the field; bounded memory (checked in a subprocess under an
address-space limit, where the old converter allocated gigabytes)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxctl.sources.gguf_convert import GgufError, convert_gguf
from mlxctl.sources.gguf_header import GgufHeaderError, read_header

HUGE = 1 << 60


def s(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def kv_str(key: str, value: str, length: int | None = None) -> bytes:
    return s(key) + struct.pack("<I", 8) + s(value, length)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def header(
    kvs: list[bytes], tensors: list[bytes] = (), *, kv_count: int | None = None,
    tensor_count: int | None = None, version: int = 3, pad: int = 64,
) -> bytes:  # fmt: skip
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    return head + b"".join(kvs) + b"".join(tensors) + b"\0" * pad


def tensor(
    name: str, dims: list[int], kind: int = 0, offset: int = 0, n_dims: int | None = None
) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return (
        s(name)
        + struct.pack("<I", n)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", kind, offset)
    )


ARCH = kv_str("general.architecture", "llama")

# (file bytes, the field the one-line error must name)
STRUCTURAL: dict[str, tuple[bytes, str]] = {
    "only the magic": (b"GGUF", "header"),
    "counts and no entries": (b"GGUF" + struct.pack("<IQQ", 3, 1, 0), "tensor_count"),
    "kv_count 2^60": (header([ARCH], kv_count=HUGE), "kv_count"),
    "tensor_count 2^60": (header([ARCH], tensor_count=HUGE), "tensor_count"),
    "key length 2^60": (header([s("general.architecture", HUGE)]), "metadata key #0"),
    "string length 2^60": (header([kv_str("general.name", "x", HUGE)]), "general.name"),
    "uint8 array of 2^60": (
        header([s("a") + struct.pack("<IIQ", 9, 0, HUGE)]),
        "a (array length)",
    ),
    "string array of 2^60": (
        header([s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, HUGE)]),
        "tokenizer.ggml.tokens (array length)",
    ),
    "a token of length 2^60": (
        header([s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("b", HUGE)]),
        "tokenizer.ggml.tokens[1] (length)",
    ),
    "array of arrays": (header([s("a") + struct.pack("<IIQ", 9, 9, 1)]), "a"),
    "unknown value type": (header([s("a") + struct.pack("<I", 77)]), "a"),
    "version 99": (header([ARCH], version=99), "version"),
    "2^31 dimensions": (header([ARCH], [tensor("t", [32], n_dims=1 << 31)]), "tensor 't'"),
    "a zero dimension": (header([ARCH], [tensor("t", [32, 0])]), "tensor 't'"),
    "a dimension of 2^60": (header([ARCH], [tensor("t", [32, HUGE])]), "tensor 't'"),
    "data past the end": (header([ARCH], [tensor("t", [32, 32])]), "tensor 't'"),
    "unknown tensor type": (header([ARCH], [tensor("t", [32], kind=999)]), "tensor 't'"),
    "alignment 0": (header([ARCH, kv_u32("general.alignment", 0)]), "general.alignment"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_a_malformed_header_is_one_line_naming_the_file_and_field(
    tmp_path: Path, case: str
) -> None:
    data, field = STRUCTURAL[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GgufError) as refused:
        convert_gguf(path, tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and len(message) < 300
    assert str(path) in message and field in message, message
    assert not (tmp_path / "out").exists()


def write_gguf(path: Path, **override: Any) -> Path:
    """A small, well-formed llama GGUF (gguf's own writer); ``override`` replaces metadata."""
    import gguf
    import numpy as np

    meta: dict[str, Any] = {
        "block_count": 1,
        "embedding_length": 64,
        "feed_forward_length": 128,
        "head_count": 4,
        "head_count_kv": 2,
        "context_length": 256,
    }
    meta.update(override)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(meta["block_count"])
    writer.add_embedding_length(meta["embedding_length"])
    writer.add_feed_forward_length(meta["feed_forward_length"])
    writer.add_head_count(meta["head_count"])
    writer.add_head_count_kv(meta["head_count_kv"])
    writer.add_context_length(meta["context_length"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    for name, shape in (("token_embd.weight", (3, 64)), ("output_norm.weight", (64,))):
        writer.add_tensor(name, np.ones(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"block_count": 4_000_000_000}, "llama.block_count"),
        ({"block_count": 3}, "llama.block_count"),  # more layers than the file has tensors
        ({"head_count": 0}, "llama.attention.head_count"),
        ({"embedding_length": 0}, "llama.embedding_length"),
        ({"head_count_kv": 3}, "llama.attention.head_count_kv"),
        ({"feed_forward_length": 0}, "llama.feed_forward_length"),
        ({"head_count": 5}, "llama.attention.head_count"),
    ],
)
def test_model_sizes_out_of_bounds_are_refused_before_loading(
    tmp_path: Path, override: dict[str, int], field: str
) -> None:
    path = write_gguf(tmp_path / "m.gguf", **override)
    with pytest.raises(GgufHeaderError, match=field) as refused:
        read_header(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_a_well_formed_header_reads_back(tmp_path: Path) -> None:
    header_ = read_header(write_gguf(tmp_path / "m.gguf"))
    assert header_.metadata["llama.block_count"] == 1
    assert {t.name: (t.dims, t.type_name) for t in header_.tensors} == {
        "token_embd.weight": ((64, 3), "F32"),
        "output_norm.weight": ((64,), "F32"),
    }


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GgufHeaderError, match="not a regular file"):
        read_header(fifo)


# The whole conversion of a hostile file, in a child limited to 1 GiB of address space:
# it must end with the one-line error, not a MemoryError (the limit) or a traceback.
CHILD = """
import json, resource, sys
def peak_kib():
    # VmHWM: this process's own peak. ru_maxrss would carry the parent's (pytest's)
    # peak across fork and exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pathlib import Path
from mlxctl.errors import MlxctlError
from mlxctl.sources.gguf_convert import convert_gguf
imported_kib = peak_kib()
try:
    convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
    outcome = "converted"
except MlxctlError as exc:
    outcome = "error: " + str(exc)
except MemoryError:
    outcome = "MemoryError"
print(json.dumps({"outcome": outcome, "imported_kib": imported_kib,
                  "peak_kib": peak_kib()}))
"""


@pytest.mark.parametrize(
    "override", [{"block_count": 4_000_000_000}, {"head_count": 0}, {"embedding_length": 0}]
)
def test_converting_a_hostile_header_stays_within_bounded_memory(
    tmp_path: Path, override: dict[str, int]
) -> None:
    path = write_gguf(tmp_path / "m.gguf", **override)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout)
    assert report["outcome"].startswith(f"error: GGUF {path}: llama."), report
    # A hostile header costs no memory: little over what the imports took.
    assert report["peak_kib"] - report["imported_kib"] < 128 * 1024, report
    assert report["peak_kib"] < 512 * 1024, report


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2000),
            st.sampled_from([0, 1, 255, 2**32 - 1, 2**63, 2**64 - 1]),
        ),
        min_size=1,
        max_size=4,
    ),
    truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
)
def test_any_corruption_of_a_header_is_read_or_refused_in_one_line(
    tmp_path: Path, cuts: list[tuple[int, int]], truncate: int | None
) -> None:
    good = tmp_path / "good.gguf"
    if not good.exists():
        write_gguf(good)
    data = bytearray(good.read_bytes())
    for offset, value in cuts:
        if offset + 8 <= len(data):
            data[offset : offset + 8] = struct.pack("<Q", value)
    if truncate is not None:
        del data[truncate:]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    try:
        read_header(bad)
    except GgufHeaderError as exc:
        assert "\n" not in str(exc) and str(bad) in str(exc)
