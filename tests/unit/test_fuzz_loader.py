"""Fuzzing the loader and validator through the real CLI entry (issue #11).

Random YAML, stack-shaped documents with wrong types, huge numbers, unicode and
control characters, deep nesting, alias bombs and binary junk go through
``mlxctl.cli.main(["validate" | "render", FILE])`` in-process. For every input: no
exception escapes (``main`` turns every :class:`~mlxctl.errors.MlxctlError` into its
exit code, so anything else is a traceback a user would see), the exit code is one
``docs/exit-codes.md`` documents for these commands, every stderr line is one short
``error:`` (or ``note:``) line, and each input is answered within a time bound.

The default run has a small fixed budget (a few seconds, derandomized, so CI is
reproducible); ``uv run pytest -m fuzz`` runs a larger, random one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxctl.cli import main
from mlxctl.runtimes import mlx_lm, vllm_mlx

# validate and render: OK, or the stack files are invalid. Nothing else is documented.
DOCUMENTED = {0, 3}
# Per input, wall clock: generous for a 2-core machine shared with other test runs (a
# bounded input takes milliseconds); an unbounded bomb or deep file took 60 s and more.
TIME_BOUND = 10.0
MAX_LINE = 1000
QUICK, LONG = 12, 400

BUDGETS = [
    pytest.param(QUICK, True, id="quick"),
    pytest.param(LONG, False, id="long", marks=pytest.mark.fuzz),
]

MANAGED = sorted(mlx_lm.RUNTIME.managed_flags | vllm_mlx.RUNTIME.managed_flags)
ARG_KEYS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.sampled_from([m[:n] for m in MANAGED for n in range(1, len(m) + 1)]),
    st.sampled_from([f"{m}=0.0.0.0" for m in MANAGED]),
    st.text(max_size=12),
)
HUGE = st.integers(min_value=10**300, max_value=10**450) | st.integers(max_value=-(10**300))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE,
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["mlx-lm", "18GB", "0.5", "~nosuchuser/m", "/dev/zero", "${env:X}"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
TIER = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["fast", "a", "gateway", "Bad Name"]) | VALUES,
        "runtime": st.sampled_from(["mlx-lm", "vllm-mlx"]) | VALUES,
        "model": st.sampled_from([{"path": "/m"}, "qwen3-8b", "smollm2-135m", "a" * 300]) | VALUES,
    },
    optional={
        "args": st.dictionaries(ARG_KEYS, SCALARS, max_size=4) | VALUES,
        "env": st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3) | VALUES,
        "context": VALUES,
        "concurrency": VALUES,
        "port": st.integers(0, 70000) | VALUES,
        "quant": VALUES,
        "startupTimeout": VALUES,
    },
)
STACK = st.fixed_dictionaries(
    {
        "apiVersion": st.just("mlxctl/v1") | VALUES,
        "kind": st.just("Stack") | VALUES,
        "metadata": st.just({"name": "t"}) | VALUES,
        "spec": st.fixed_dictionaries(
            {"tiers": st.lists(TIER, max_size=3)},
            optional={
                "gateway": st.fixed_dictionaries(
                    {}, optional={"port": VALUES, "masterKey": VALUES}
                ),
                "memory": st.fixed_dictionaries({"budget": VALUES}),
            },
        )
        | VALUES,
    }
)
VALID = (
    "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
    "    - name: fast\n      runtime: mlx-lm\n      model: {path: /m}\n"
    "      args: {max-tokens: 64}\n      env: {A: b}\n"
)
TOKENS = [
    "[", "]", "{", "}", ": ", "- ", "&a ", "*a", "&b ", "*b", "<<: *a", "? ", "\n", "  ", "'", '"',
    "#", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "!!binary ", "!!python/object:os.system ",
    "!!int ", "9" * 400, "\x00", "\t", "\\0", "\u2028", "\ufeff", "2024-02-30", ".nan", "key",
]  # fmt: skip


def yaml_text(data: Any) -> str:
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    YAML(typ="safe").dump(data, out)
    return out.getvalue()


def alias_bomb(levels: int, width: int, where: str) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    anchors = "\n".join("  " + line for line in lines)
    if where == "spec":
        return f"{VALID}  x:\n{anchors}\n"
    if where == "name":
        return VALID.replace("{name: t}", f"{{name: *a{levels - 1}}}").replace(
            "spec:\n", f"spec:\n  defs:\n{anchors.replace('  ', '    ', 1)}\n", 1
        )
    return "\n".join(lines) + f"\nrest: *a{levels - 1}\n"


def deep(depth: int, style: str) -> str:
    if style == "flow":
        return "spec: " + "[" * depth + "]" * depth + "\n"
    if style == "flow-map":
        return "spec: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if style == "block":
        return "- " * depth + "x\n"  # compact nested block sequences, one line
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "1\n"


def mutate(text: str, edits: list[tuple[int, str]]) -> str:
    for position, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at:]
    return text


INPUTS: dict[str, st.SearchStrategy[bytes]] = {
    "stack-shaped": STACK.map(yaml_text).map(str.encode),
    "random-yaml": VALUES.map(yaml_text).map(str.encode),
    "token-soup": st.lists(st.sampled_from(TOKENS), max_size=80).map("".join).map(str.encode),
    "mutated-stack": st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(TOKENS) | st.text(max_size=4)),
        max_size=6,
    )
    .map(lambda edits: mutate(VALID, edits))
    .map(lambda text: text.encode("utf-8", errors="surrogatepass")),
    "binary": st.binary(max_size=3000),
    "unicode": st.text(max_size=500).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
    "alias-bomb": st.builds(
        alias_bomb,
        st.integers(2, 12),
        st.integers(2, 12),
        st.sampled_from(["spec", "name", "top"]),
    ).map(str.encode),
    "deep-nesting": st.builds(
        deep, st.integers(10, 3000), st.sampled_from(["flow", "flow-map", "block", "indented"])
    ).map(str.encode),
}


def check_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    for command in ("validate", "render"):
        started = time.monotonic()
        code = main([command, str(path)])  # any non-MlxctlError exception fails the test
        took = time.monotonic() - started
        _, err = capsys.readouterr()
        assert code in DOCUMENTED, (command, code, err[-500:])
        assert took < TIME_BOUND, f"{command} took {took:.1f}s"
        lines = err.splitlines()
        if code != 0:
            assert lines and any(line.startswith("error: ") for line in lines), err[-500:]
        for line in lines:
            assert line.startswith(("error: ", "note: ")), line[:300]
            assert len(line) <= MAX_LINE, line[:300]
            assert "Traceback" not in line


def run_fuzz(
    strategy: st.SearchStrategy[bytes], budget: int, quick: bool, body: Callable[[bytes], None]
) -> None:
    @settings(
        max_examples=budget,
        deadline=None,  # the bound is checked per command, with a margin for a busy machine
        derandomize=quick,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(raw: bytes) -> None:
        body(raw)

    run()


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("budget", "quick"), BUDGETS)
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_fuzz_validate_and_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, budget: int, quick: bool
) -> None:
    run_fuzz(INPUTS[kind], budget, quick, lambda raw: check_input(tmp_path, capsys, raw))
