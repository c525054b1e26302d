"""Hostile stack files, secrets, model configs and state files (issue #11, rows 4, 6, 7).

Each one, driven through the real CLI entry in-process, is one short ``error:`` line
per problem (``file:line:column`` where there is a line) with a documented exit code:
never a traceback, never a hang, never unbounded memory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mlxctl.cli import main
from mlxctl.errors import MlxctlError
from mlxctl.files import FileRefusedError, read_bounded
from mlxctl.machine.inventory import Inventory
from mlxctl.paths import default_paths
from mlxctl.reconcile.state_lock import StateLock
from mlxctl.spec import secrets

HEAD = "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n"
BIG = "9" * 400


def tier(extra: str = "", model: str = "{path: /m}") -> str:
    return f"  tiers:\n  - {{name: a, runtime: mlx-lm, model: {model}{extra}}}\n"


def bomb(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs shape: each anchor is ``width`` aliases of the previous one."""
    lines = ["  tiers:", "  - name: a", "    runtime: mlx-lm", "    model: {path: /m}", "    env:"]
    lines.append("      E0: &a0 [" + ", ".join(["lol"] * width) + "]")
    for i in range(1, levels):
        lines.append(f"      E{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], float]:
    started = time.monotonic()
    code = main(args)
    took = time.monotonic() - started
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line], took


def assert_one_line_errors(lines: list[str], *, most: int = 4) -> None:
    assert lines, "expected an error line"
    assert len(lines) <= most, lines
    for line in lines:
        assert line.startswith("error: "), line
        assert "Traceback" not in line
        assert len(line) < 400, line


# (name, file body, where the error points, what it says)
CASES = [
    ("nesting 1000 levels", HEAD[:-1] + " " + "[" * 1000 + "]" * 1000 + "\n", ":4:", "deeper"),
    ("alias bomb", HEAD + bomb(), ":", "aliases are expanded"),
    ("NUL byte", HEAD.replace("{name: t}", "{name: t\x00}"), ":3:", "#x0000"),
    ("control character", HEAD.replace("{name: t}", '{name: "t\x07"}'), ":3:", "#x0007"),
    ("400-digit context", HEAD + tier(f", context: {BIG}"), ":6:", "less than or equal"),
    ("400-digit concurrency", HEAD + tier(f", concurrency: {BIG}"), ":6:", "less than or equal"),
    ("400-digit budget", HEAD + f"  memory: {{budget: {BIG}}}\n", ":5:", "400-digit number"),
    ("400-digit size budget", HEAD + f"  memory: {{budget: {BIG}GB}}\n", ":5:", "a size is"),
    ("5000-digit integer", HEAD + tier(f", context: {'9' * 5000}"), ":", "cannot be read"),
    ("impossible date", HEAD + "  memory: {budget: 2024-02-30}\n", ":", "cannot be read"),
    ("catalog id of 300", HEAD + tier(model="a" * 300), ":6:", "at most 128"),
    ("NUL in an args value", HEAD + tier(', args: {x: "a\\0b"}'), ":6:", "NUL"),
    ("NUL in an env value", HEAD + tier(', env: {A: "a\\0b"}'), ":6:", "NUL"),
    ("NUL in a path", HEAD + tier(model='{path: "/m\\0"}'), ":6:", "control characters"),
    ("invalid UTF-8", HEAD.encode().decode() + "# \udcff\n", ":5", "not UTF-8"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("name", "body", "where", "says"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "render", "diff"])
def test_hostile_stack_file_is_one_short_line_and_exit_3(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    name: str,
    body: str,
    where: str,
    says: str,
) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(body.encode("utf-8", errors="surrogateescape"))
    code, lines, took = run([command, str(path)], capsys)
    assert code == 3, lines
    assert_one_line_errors(lines)
    assert any(line.startswith(f"error: {path}{where}") and says in line for line in lines), lines
    assert took < 5.0, f"{name} took {took:.1f}s"


def test_a_larger_file_than_the_cap_is_refused_before_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "# " + "x" * (2 * 1024 * 1024) + "\n")
    code, lines, _ = run(["validate", str(path)], capsys)
    assert code == 3
    size = path.stat().st_size
    assert lines == [f"error: {path}: {size} bytes, over the 1048576 allowed; refused"]


@pytest.mark.timeout(10)
def test_a_fifo_and_a_device_are_refused_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    code, lines, _ = run(["validate", str(fifo)], capsys)
    assert (code, lines) == (3, [f"error: {fifo}: not a regular file (a FIFO); refused"])
    code, lines, _ = run(["validate", "/dev/zero"], capsys)
    refused = "error: /dev/zero: not a regular file (a character device); refused"
    assert (code, lines) == (3, [refused])
    # A FIFO inside a stack directory is not a stack file at all.
    (tmp_path / "ok.yaml").write_text(HEAD + "  tiers: []\n")
    code, _, _ = run(["validate", str(tmp_path)], capsys)
    assert code == 0


@pytest.mark.timeout(10)
def test_secret_files_are_regular_and_bounded(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"k" * (secrets.MAX_SECRET_BYTES + 1))
    good = tmp_path / "key"
    good.write_text("sk-1\n")
    assert secrets.resolve(f"${{file:{good}}}", {}, where="w") == "sk-1"
    for path, says in (
        (fifo, "a FIFO"),
        (Path("/dev/zero"), "a character device"),
        (big, "over the 65536 allowed"),
        (Path("~nosuchuser-x/key"), "home directory"),
        (tmp_path / "absent", "No such file"),
    ):
        with pytest.raises(secrets.MissingSecretError, match=says):
            secrets.resolve(f"${{file:{path}}}", {}, where="w")


def test_read_bounded_reads_a_regular_file_and_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert read_bounded(path, 3) == b"abc"
    with pytest.raises(FileRefusedError, match="over the 2 allowed"):
        read_bounded(path, 2)
    with pytest.raises(FileRefusedError, match="a directory"):
        read_bounded(tmp_path, 10)


def model_with_config(tmp_path: Path, config: str) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    return model


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"num_hidden_layers": ' + BIG + ', "num_attention_heads": 4}', "400-digit number"),
        ('{"text_config": {"hidden_size": -' + BIG + "}}", "400-digit number"),
        ("[" * 100_000, "nested too deeply"),
        ("{not json", "cannot read the model config"),
    ],
)
def test_a_hostile_model_config_blocks_its_tier_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, says: str
) -> None:
    """One tier's bad model blocks that tier only (issue 8): named, with why, on one line."""
    model = model_with_config(tmp_path, config)
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + tier(model=f"{{path: {model}}}"))
    code = main(["diff", str(path)])
    out = capsys.readouterr().out
    assert code == 1, out  # a plan with a blocked tier
    blocked = [line for line in out.splitlines() if " blocked " in line]
    assert len(blocked) == 1 and str(model / "config.json") in blocked[0] and says in blocked[0]
    assert "Traceback" not in out and len(blocked[0]) < 400


@pytest.mark.parametrize(
    ("model", "says"), [("~nosuchuser/m", "~nosuchuser: no such user"), ("LOOP", "loop")]
)
def test_unresolvable_model_paths_are_errors_at_the_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, says: str
) -> None:
    if model == "LOOP":
        (tmp_path / "x").symlink_to(tmp_path / "y")
        (tmp_path / "y").symlink_to(tmp_path / "x")
        model = str(tmp_path / "x")
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + tier(model=f"{{path: {model}}}"))
    for command in ("diff", "status"):
        code, lines, _ = run([command, str(path)], capsys)
        if command == "diff":
            assert code == 3
            assert len(lines) == 1 and says in lines[0].lower()
            assert lines[0].startswith(f"error: {path}:6: tier 'a': model.path: ")
        else:
            assert code == 0  # status still shows what runs, with a warning
            assert says in lines[0].lower()


@pytest.mark.parametrize(
    "content",
    [
        "{corrupt",
        '{"services": []}',
        '{"services": {"a": {"name": "a", "pid": "12"}}}',
        '{"services": {"a": 1}}',
        "\udcff",
    ],
)
def test_a_corrupt_inventory_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    paths = default_paths()
    paths.state.mkdir(parents=True)
    paths.inventory.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(MlxctlError, match="not a usable inventory"):
        Inventory(paths.inventory).load()
    for command in (["status"], ["down"]):
        code, lines, _ = run(command, capsys)
        assert code == 4, lines
        lines = [line for line in lines if not line.startswith("note: ")]
        assert_one_line_errors(lines, most=1)
        assert lines[0].startswith(f"error: {paths.inventory}: not a usable inventory")


def test_a_directory_at_the_lock_path_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = default_paths()
    paths.lock.mkdir(parents=True)
    with pytest.raises(MlxctlError, match=f"cannot take the lock {paths.lock}: Is a directory"):
        StateLock(paths.lock).acquire()
    code, lines, _ = run(["down"], capsys)
    assert (code, lines) == (4, [f"error: cannot take the lock {paths.lock}: Is a directory"])


def test_a_valid_inventory_still_loads(tmp_path: Path) -> None:
    paths = default_paths()
    record = {
        "name": "a", "role": "tier", "pid": 1, "pgid": 1, "create_time": 1.0,
        "cmdline": ["x"], "instance": "i", "spec_hash": "h", "port": 8000, "log": "l",
        "started_at": 1.0,
    }  # fmt: skip
    paths.state.mkdir(parents=True)
    paths.inventory.write_text(json.dumps({"version": 1, "services": {"a": record}}))
    assert Inventory(paths.inventory).load()["a"].pid == 1


@pytest.mark.parametrize(
    "body",
    ["!!int ", "a: !!int\n", "a: !!float x\n", "a: !!timestamp 2024-13-99\n", "a: !!binary ?\n"],
)
def test_values_ruamel_cannot_build_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    """Found by the fuzz test: an empty ``!!int`` raised IndexError inside ruamel."""
    path = tmp_path / "s.yaml"
    path.write_text(body)
    code, lines, _ = run(["validate", str(path)], capsys)
    assert code == 3
    assert_one_line_errors(lines, most=1)
    assert lines[0].startswith(f"error: {path}")


def test_ruamel_warnings_never_reach_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    """Found by the fuzz test: a reused anchor made ruamel print a multi-line warning."""
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "  x: &a 1\n  y: &a 2\n")
    code, lines, _ = run(["validate", str(path)], capsys)
    assert code == 3 and all(line.startswith("error: ") for line in lines)
    assert not [w for w in recwarn if "ruamel" in str(w.filename)]
