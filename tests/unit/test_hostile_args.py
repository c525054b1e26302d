"""Tier ``args`` can never override a flag mlxctl manages (issue #11, row 1).

argparse accepts an unambiguous prefix of a flag (``--hos`` for ``--host``) and the
``--flag=value`` form, and the last occurrence wins; mlxctl's own flags come first in
the command line. So a key that equals, abbreviates or embeds ``=`` for a managed flag
must be a validation error at ``file:line:column``. The table below is checked by the
loader, and the rendered command lines by the servers' real argument parsers, built
from the installed mlx-lm and vllm-mlx (no server process is started).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mlxctl.errors import SpecError
from mlxctl.runtimes import mlx_lm, vllm_mlx
from mlxctl.runtimes.base import ArgValue, Runtime, ServerLaunch
from mlxctl.spec.loader import load_stack_set

RUNTIMES = {"mlx-lm": mlx_lm.RUNTIME, "vllm-mlx": vllm_mlx.RUNTIME}
MODEL_DIR = Path("/models/declared")
PORT = 8123
SERVED = "fast"


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def mlx_lm_parser() -> argparse.ArgumentParser:
    """``mlx_lm.server``'s parser: built inside its ``main()``, captured at ``parse_args``."""
    import mlx_lm.server

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        mlx_lm.server.main()
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError("mlx_lm.server.main() did not parse its arguments")


def vllm_mlx_serve_parser() -> argparse.ArgumentParser:
    from vllm_mlx.cli import create_parser

    parser = create_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = sub.choices["serve"]
    assert isinstance(serve, argparse.ArgumentParser)
    return serve


PARSERS = {"mlx-lm": mlx_lm_parser, "vllm-mlx": vllm_mlx_serve_parser}
# Where each runtime's managed values land in the parsed namespace.
EXPECTED = {
    "mlx-lm": {"model": str(MODEL_DIR), "host": "127.0.0.1", "port": PORT},
    "vllm-mlx": {
        "model": str(MODEL_DIR),
        "models_config": None,
        "host": "127.0.0.1",
        "port": PORT,
        "served_model_name": SERVED,
        "api_key": None,
    },
}


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {name: build() for name, build in PARSERS.items()}


def render(runtime: Runtime, args: Mapping[str, ArgValue]) -> list[str]:
    assert runtime.argv is not None
    argv = runtime.argv(ServerLaunch(Path("/venv/bin/python"), MODEL_DIR, PORT, SERVED, args))
    # Drop the program: "python -m mlxctl.runtimes.tier_guard mlx-lm" or "... vllm-mlx serve".
    skip = 4 if runtime is mlx_lm.RUNTIME else 5
    return list(argv[skip:])


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """The namespace the server would run with, or None when its parser refuses argv."""
    try:
        return parser.parse_args(argv)
    except SystemExit:
        return None
    except ArithmeticError:
        return None  # mlx-lm's --prompt-cache-bytes type raises decimal errors: no start


def managed_values(runtime: str, ns: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(ns, key) for key in EXPECTED[runtime]}


def hostile_keys(runtime: Runtime) -> list[tuple[str, str]]:
    """(key, why) for every managed flag: itself, each prefix, and the ``=`` forms."""
    out: list[tuple[str, str]] = []
    for flag in sorted(runtime.managed_flags):
        out += [(flag[:n], "prefix" if n < len(flag) else "exact") for n in range(1, len(flag) + 1)]
        out += [(f"{flag}=x", "equals-form"), (f"{flag[:2]}=x", "prefix-equals-form")]
    return out


TABLE = [
    (name, key, why) for name, runtime in RUNTIMES.items() for key, why in hostile_keys(runtime)
] + [
    (name, key, why)
    for name in RUNTIMES
    for key, why in (
        ("", "empty"),
        ("=", "bare equals"),
        (" ", "whitespace"),
        ("max tokens", "whitespace"),
        ("max-tokens\n", "newline"),
        ("a\x00b", "NUL"),
        ("a\x1bb", "escape"),
        ("--", "dashes only"),
        ("é", "not a flag name"),
    )
]


def stack_file(tmp_path: Path, runtime: str, key: str) -> Path:
    import json

    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
        f"    - name: fast\n      runtime: {runtime}\n      model: {{path: /m}}\n"
        f"      args:\n        {json.dumps(key)}: 0.0.0.0\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("runtime", "key", "why"), TABLE)
def test_hostile_key_is_a_validation_error_at_the_key(
    tmp_path: Path, runtime: str, key: str, why: str
) -> None:
    path = stack_file(tmp_path, runtime, key)
    with pytest.raises(SpecError) as err:
        load_stack_set([path])
    [problem] = err.value.problems
    assert problem.startswith(f"{path}:10:9: spec.tiers[0].args"), problem
    assert "\n" not in problem and "\x00" not in problem and len(problem) < 300


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_without_validation_the_hostile_forms_really_override_the_server(
    parsers: dict[str, argparse.ArgumentParser], runtime: str
) -> None:
    """Why the table matters: the real parsers take a prefix and a ``=`` form as the flag."""
    parser = parsers[runtime]
    for args in ({"hos": "0.0.0.0"}, {"host=0.0.0.0": True}, {"por": 1}, {"port=1": True}):
        ns = parse(parser, render(RUNTIMES[runtime], args))
        assert ns is not None
        assert managed_values(runtime, ns) != EXPECTED[runtime], args


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_no_flag_the_server_really_has_is_refused_unless_managed(
    tmp_path: Path, parsers: dict[str, argparse.ArgumentParser], runtime: str
) -> None:
    """The prefix rule never blocks a real flag: none is a prefix of a managed one."""
    managed = RUNTIMES[runtime].managed_flags
    flags = sorted(
        option[2:]
        for action in parsers[runtime]._actions
        for option in action.option_strings
        if option.startswith("--") and option[2:] not in managed and option != "--help"
    )
    assert len(flags) > 10
    body = "".join(f"        {flag}: 1\n" for flag in flags)
    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
        f"    - name: fast\n      runtime: {runtime}\n      model: {{path: /m}}\n"
        f"      args:\n{body}",
        encoding="utf-8",
    )
    [tier] = load_stack_set([path]).tiers
    assert sorted(tier.spec.args) == flags


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_accepted_args_leave_every_managed_value_as_mlxctl_set_it(
    tmp_path: Path, parsers: dict[str, argparse.ArgumentParser], runtime: str
) -> None:
    """Each real flag with a value, and values that look like flags: the server still
    binds 127.0.0.1 on mlxctl's port and serves the declared model (or refuses argv)."""
    parser = parsers[runtime]
    managed = RUNTIMES[runtime].managed_flags
    samples: list[dict[str, ArgValue]] = [
        {"max-tokens": 64},
        {"trust-remote-code": True},
        {"trust-remote-code": "/other/model"},
        {"chat-template": "--host=0.0.0.0"},
        {"max-tokens": "--port=1"},
        {"max-tokens": "-1"},
    ]
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option[2:] not in managed and option != "--help":
                plausible = action.default if isinstance(action.default, int | float) else "1"
                samples.append({option[2:]: True if action.nargs == 0 else plausible})
                samples.append({option[2:]: "0.0.0.0"})
    checked = 0
    for args in samples:
        ns = parse(parser, render(RUNTIMES[runtime], args))
        if ns is None:
            continue  # the server refuses this command line: it never starts wrong
        assert managed_values(runtime, ns) == EXPECTED[runtime], args
        checked += 1
    assert checked > 20
