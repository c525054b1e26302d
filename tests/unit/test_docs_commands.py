"""Every ``mlxctl ...`` command the README and ``docs/`` show, and every example in a
command's ``--help``, is checked against the CLI itself: the command path exists and
its options parse (click's own parser: unknown options, missing option values, too
many arguments). ``<placeholders>`` stand for a value and are accepted as one.

Commands are read from fenced code blocks (a line that starts with ``mlxctl``, after an
optional ``$ ``prompt, up to a shell operator or a comment) and from inline code spans
that start with ``mlxctl ``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from mlxctl.cli import _register
from mlxctl.cli.root import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(?<!`)`(mlxctl [^`]+)`(?!`)")
OPERATORS = ("|", "||", "&&", ";", ">", ">>", "2>&1", "&", "<", "2>", "2>/dev/null")


def commands_in(text: str) -> list[tuple[int, str]]:
    """(line number, command text after ``mlxctl``) for each command ``text`` shows."""
    found: list[tuple[int, str]] = []
    fenced = False
    pending = ""
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            pending = ""
            continue
        if fenced:
            stripped = line.strip().removeprefix("$ ").strip()
            if pending:
                stripped, pending = pending + " " + stripped, ""
            elif not re.match(r"^(sudo |uv run |MLXCTL_\w+=\S+ )*mlxctl(\s|$)", stripped):
                continue
            else:
                start = number
            if stripped.endswith("\\"):
                pending = stripped[:-1]
                continue
            found.append((start, stripped))
        else:
            found += [(number, m.group(1)) for m in INLINE.finditer(line)]
    return found


def argv_of(command: str) -> list[str] | None:
    """The arguments after ``mlxctl`` (None when the text is not one parseable command)."""
    command = re.sub(r"<[^<>]*>", "PLACEHOLDER", command)
    command = re.sub(r"\[[^\[\]]*\]", "", command)  # [OPTIONAL] parts of a synopsis
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
    except ValueError:
        return None
    words: list[str] = []
    for token in tokens:
        if token in OPERATORS or set(token) <= set("|&;<>"):
            break
        words.append(token)
    while words and words[0] != "mlxctl":
        words.pop(0)  # sudo, uv run, VAR=value
    return words[1:] if words else None


def check(args: list[str]) -> str | None:
    """Why ``mlxctl ARGS`` does not parse (None when it does)."""
    _register()
    command: click.Command = app
    path = ["mlxctl"]
    while isinstance(command, click.Group) and args:
        if args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
            # A group's own options (``mlxctl --host NAME reconcile``) come before its
            # subcommand: click's group parser stops at the first word that is not one.
            try:
                group = click.Context(command, info_name=" ".join(path))
                _, args, _ = command.make_parser(group).parse_args(args=list(args))
            except click.UsageError as exc:
                return f"{' '.join(path)}: {exc.format_message()}"
            continue
        if args[0].startswith("-"):
            break
        sub = command.commands.get(args[0])
        if sub is None:
            return f"no command {' '.join([*path, args[0]])!r}"
        path.append(args.pop(0))
        command = sub
    if any(a in ("-h", "--help", "--version") for a in args):
        return None
    try:
        ctx = click.Context(command, info_name=" ".join(path), resilient_parsing=False)
        parser = command.make_parser(ctx)
        opts, rest, _ = parser.parse_args(args=list(args))
    except click.UsageError as exc:
        return f"{' '.join(path)}: {exc.format_message()}"
    for param in command.params:
        value = opts.get(param.name or "")
        values = value if isinstance(value, list | tuple) else [value]
        if isinstance(param.type, click.Choice):
            for v in values:
                if isinstance(v, str) and v != "PLACEHOLDER" and v not in param.type.choices:
                    return f"{' '.join(path)}: {v!r} is not one of {list(param.type.choices)}"
    if isinstance(command, click.Group):
        return f"{' '.join(path)} needs a subcommand, not {rest[0]!r}" if rest else None
    if rest and not command.allow_extra_args:
        return f"{' '.join(path)}: unexpected argument(s) {rest}"
    return None


def documented() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for number, command in commands_in(doc.read_text(encoding="utf-8")):
            out.append((f"{doc.relative_to(ROOT)}:{number}", command))
    return out


@pytest.mark.parametrize(("where", "command"), documented(), ids=lambda v: str(v)[:60])
def test_a_documented_command_parses(where: str, command: str) -> None:
    args = argv_of(command)
    assert args is not None, f"{where}: cannot read {command!r}"
    problem = check(args)
    assert problem is None, f"{where}: `{command}`: {problem}"


def every_command() -> list[tuple[str, click.Command]]:
    _register()
    out: list[tuple[str, click.Command]] = []

    def walk(group: click.Group, path: str) -> None:
        for name, command in sorted(group.commands.items()):
            out.append((f"{path} {name}", command))
            if isinstance(command, click.Group):
                walk(command, f"{path} {name}")

    walk(app, "mlxctl")
    return out


@pytest.mark.parametrize(("path", "command"), every_command(), ids=lambda v: str(v)[:40])
def test_every_command_has_help_with_an_example_that_parses(
    path: str, command: click.Command
) -> None:
    assert command.help or command.short_help, f"{path} has no help"
    epilog = command.epilog or ""
    examples = [line.strip() for line in epilog.splitlines() if line.strip().startswith("mlxctl")]
    assert examples, f"{path}: --help shows no example (click epilog)"
    assert any(e == path or e.startswith(path + " ") for e in examples), (path, examples)
    for example in examples:
        args = argv_of(example)
        assert args is not None and check(args) is None, f"{path}: {example}: {check(args or [])}"


# Commands whose output is not a report (so it has no JSON form), and why. Every other
# command has ``-o/--output`` with ``json``.
NOT_REPORTS = {
    "mlxctl chat": "streams a model's answer; the gateway's own API is its JSON form",
    "mlxctl completion": "prints a shell script",
    "mlxctl gateway env": "prints the client's own format: shell exports, TOML, opencode.json",
    "mlxctl gateway key": "prints one value, the key, as $(mlxctl gateway key) wants it",
    "mlxctl gateway-key": "the same command as `gateway key`",
    "mlxctl init": "prints (or writes, -o FILE) a stack file: YAML is what it makes",
    "mlxctl quickstart": "a guided first run; `reconcile --once -o json` is its scriptable form",
}


def json_output(command: click.Command) -> bool:
    """``-o/--output`` with ``json`` among its choices."""
    for param in command.params:
        if "--output" in param.opts and "-o" in param.opts:
            return isinstance(param.type, click.Choice) and "json" in param.type.choices
    return False


@pytest.mark.parametrize(
    ("path", "command"),
    [(p, c) for p, c in every_command() if not isinstance(c, click.Group)],
    ids=lambda v: str(v)[:40],
)
def test_every_command_that_reports_has_json_output(path: str, command: click.Command) -> None:
    if path in NOT_REPORTS:
        assert not json_output(command), f"{path} has -o json now: drop it from NOT_REPORTS"
    else:
        assert json_output(command), f"{path} reports, but has no -o/--output json"


def test_every_exception_names_a_command() -> None:
    assert set(NOT_REPORTS) <= {path for path, _ in every_command()}


def test_the_checker_catches_what_it_must() -> None:
    assert check(["status", "-o", "json"]) is None
    assert check(["events", "--tier", "fast", "--kind", "crash", "-f"]) is None
    assert "no command 'mlxctl statos'" in (check(["statos"]) or "")
    assert "No such option" in (check(["status", "--colour"]) or "")
    assert "requires an argument" in (check(["events", "--tier"]) or "")
    assert "unexpected" in (check(["logs", "a", "b"]) or "")
    assert "is not one of" in (check(["status", "-o", "yaml"]) or "")
    assert argv_of("mlxctl logs <tier> -f | head") == ["logs", "PLACEHOLDER", "-f"]
    assert argv_of("MLXCTL_HOME=/x mlxctl status  # comment") == ["status"]
    text = "```\n$ mlxctl diff stacks/ \\\n    -o json\nnot mlxctl\n```\nrun `mlxctl up` now"
    assert commands_in(text) == [(2, "mlxctl diff stacks/  -o json"), (6, "mlxctl up")]
