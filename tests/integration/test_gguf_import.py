"""GGUF import, tensor by tensor: the tiny model written as GGUF in each supported tensor
type (by llama.cpp's own ``gguf`` writer and quantizers), converted, and compared with
the source; the converted F32 model computes the source model's logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import Mlxctl, stack_yaml

from mlxctl.sources.gguf_convert import GgufError, convert_gguf
from mlxctl.sources.lockfile import read_lock
from mlxctl.testing.hub import LocalHub
from mlxctl.testing.tiny_gguf import gguf_name, source_tensors, write_tiny_gguf


def raw_tensors(path: Path) -> dict[str, Any]:
    """Each GGUF tensor dequantized by llama.cpp's reference code (float32 numpy)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for tensor in GGUFReader(str(path)).tensors:
        data = dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        out[tensor.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return out


def converted_tensors(model_dir: Path) -> dict[str, Any]:
    """The converted weights, dequantized where quantized, under their GGUF names."""
    import json

    import mlx.core as mx
    import numpy as np

    weights = mx.load(str(model_dir / "model.safetensors"))
    assert isinstance(weights, dict)
    quant = json.loads((model_dir / "config.json").read_text()).get("quantization", {})
    out = {}
    for name, array in weights.items():
        if name.endswith((".scales", ".biases")):
            continue
        module = name.removesuffix(".weight")
        if f"{module}.scales" in weights:
            params = quant.get(module, quant)
            array = mx.dequantize(
                array,
                weights[f"{module}.scales"],
                weights[f"{module}.biases"],
                group_size=params["group_size"],
                bits=params["bits"],
            )
        out[gguf_name(name)] = np.array(array.astype(mx.float32))
    return out


@pytest.mark.parametrize(
    ("tensor_type", "tolerance"),
    [("F32", 0.0), ("F16", 1e-3), ("BF16", 1e-2), ("Q8_0", 1e-2), ("Q4_0", 0.15), ("Q4_1", 0.1)],
)
def test_each_tensor_type_converts_tensor_by_tensor(
    tiny_model: Path, tmp_path: Path, tensor_type: str, tolerance: float
) -> None:
    import numpy as np

    gguf_file = write_tiny_gguf(tiny_model, tmp_path / "tiny.gguf", tensor_type)
    out = convert_gguf(gguf_file, tmp_path / "converted")
    source = source_tensors(tiny_model)
    reference = raw_tensors(gguf_file)
    converted = converted_tensors(out)
    assert set(converted) == set(source) == set(reference)
    for name, expected in source.items():
        got = converted[name]
        assert got.shape == expected.shape, name
        # What llama.cpp's reference dequantizer reads from the file (MLX keeps a block's
        # scale and offset in float16: within 0.1% of the tensor's range) ...
        scale = float(np.max(np.abs(reference[name])))
        np.testing.assert_allclose(got, reference[name], rtol=0, atol=1e-3 * scale, err_msg=name)
        # ... and close to the source weights, by the precision of the type.
        error = float(np.max(np.abs(got - expected)))
        assert error <= tolerance * float(np.max(np.abs(expected))), (name, error)


def test_the_converted_model_computes_the_source_models_logits(
    tiny_model: Path, tmp_path: Path
) -> None:
    import mlx.core as mx
    from mlx_lm import load

    gguf_file = write_tiny_gguf(tiny_model, tmp_path / "tiny.gguf", "F32")
    out = convert_gguf(gguf_file, tmp_path / "converted")
    source_model, source_tok = load(str(tiny_model))
    model, tokenizer = load(str(out))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello world"}], add_generation_prompt=True
    )
    assert prompt == source_tok.apply_chat_template(
        [{"role": "user", "content": "Hello world"}], add_generation_prompt=True
    )
    tokens = mx.array([prompt])
    assert mx.allclose(model(tokens), source_model(tokens), atol=1e-4).item()


def test_unsupported_types_and_architectures_are_refused_in_one_line(
    tiny_model: Path, tmp_path: Path
) -> None:
    q5 = write_tiny_gguf(tiny_model, tmp_path / "q5.gguf", "Q5_0")
    with pytest.raises(GgufError) as caught:
        convert_gguf(q5, tmp_path / "out")
    assert str(caught.value).startswith("unsupported GGUF tensor type Q5_0 (blk.")
    assert str(caught.value).endswith("mlxctl converts F32, F16, BF16, Q8_0, Q4_0, Q4_1")
    qwen = write_tiny_gguf(tiny_model, tmp_path / "qwen.gguf", "F16", architecture="qwen2")
    with pytest.raises(GgufError, match=r"^unsupported GGUF architecture 'qwen2' in qwen.gguf"):
        convert_gguf(qwen, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_tiers_local_and_from_the_hub_are_converted_once_and_served(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    local = write_tiny_gguf(tiny_model, tmp_path / "tiny.Q8_0.gguf", "Q8_0")
    remote = write_tiny_gguf(tiny_model, tmp_path / "tiny.Q4_0.gguf", "Q4_0")
    commit = local_hub.commit(
        "org/tiny-gguf", {"README.md": "a GGUF repo", "tiny.Q4_0.gguf": remote}
    )
    stack = mlxctl.write(
        "laptop.yaml",
        stack_yaml(
            [
                {"name": "local", "runtime": "mlx-lm", "model": {"gguf": str(local)}},
                {
                    "name": "remote",
                    "runtime": "mlx-lm",
                    "model": {"gguf": "org/tiny-gguf/tiny.Q4_0.gguf"},
                },
            ]
        ),
    )
    done = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=240)
    assert done.returncode == 0, done.stderr
    entries = read_lock(stack.with_name("laptop.lock.yaml"))
    assert list(entries) == ["org/tiny-gguf@main#tiny.Q4_0.gguf"]
    [entry] = entries.values()
    assert entry.revision == commit and [f.path for f in entry.files] == ["tiny.Q4_0.gguf"]
    assert [r.path.rsplit("/", 1)[-1] for r in local_hub.downloads()] == ["tiny.Q4_0.gguf"]
    store = mlxctl.home / "state" / "models" / "gguf"
    converted = sorted(p.name for p in store.iterdir() if not p.name.startswith("."))
    assert len(converted) == 2
    assert f"org--tiny-gguf--tiny.Q4_0-{commit[:12]}" in converted
    assert any(name.startswith("tiny.Q8_0-") for name in converted)
    # Converted once: a second pass prepares nothing.
    again = mlxctl.run("diff", str(mlxctl.stacks))
    assert again.returncode == 0, again.stdout + again.stderr


def test_models_pull_without_a_source_prepares_every_tier_of_the_stack(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    local = write_tiny_gguf(tiny_model, tmp_path / "tiny.F16.gguf", "F16")
    commit = local_hub.commit_dir("org/tiny", tiny_model)
    stack = mlxctl.write(
        "laptop.yaml",
        stack_yaml(
            [
                {"name": "a", "runtime": "mlx-lm", "model": {"gguf": str(local)}},
                {"name": "b", "runtime": "mlx-lm", "model": {"hf": "org/tiny"}},
                {"name": "c", "runtime": "vllm-mlx", "model": {"hf": "org/tiny"}},
            ]
        ),
    )

    def pull() -> list[dict[str, Any]]:
        result = mlxctl.run("models", "pull", "-f", str(stack), "-o", "json", timeout=180)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        return [r for r in records if r["kind"] == "pulled"]

    first = pull()
    assert [(r["tier"], r["already_present"]) for r in first] == [
        ("a", False),
        ("b", False),
        ("c", True),  # the same model as b: pulled once
    ]
    assert first[1]["revision"] == commit
    assert [r["already_present"] for r in pull()] == [True, True, True]
    assert mlxctl.inventory() == {}  # nothing was started
