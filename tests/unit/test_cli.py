"""The command line in-process: exit codes, one-line errors, render and diff output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.cli import main

STACK = """\
apiVersion: mlxctl/v1
kind: Stack
metadata: {name: laptop}
spec:
  tiers:
    - name: fast
      runtime: mlx-lm
      model: {path: /models/tiny}
      args: {max-tokens: 4096}
      env: {HF_TOKEN: "${env:HF_TOKEN}"}
    - name: agent
      runtime: vllm-mlx
      model: {path: /models/tiny}
      port: 8010
"""


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    path = tmp_path / "stacks" / "laptop.yaml"
    path.parent.mkdir()
    # fast's model exists; agent's does not.
    path.write_text(STACK.replace("/models/tiny}\n      args", f"{model}}}\n      args"))
    return path


def test_validate_ok_and_invalid(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(stack)]) == 0
    assert "valid: 1 file(s), 2 tier(s)" in capsys.readouterr().out
    stack.write_text(STACK.replace("runtime: mlx-lm", "runtim: mlx-lm"))
    assert main(["validate", str(stack)]) == 3
    err = capsys.readouterr().err
    assert (
        f"error: {stack}:7:7: spec.tiers[0].runtim: unknown key 'runtim' (did you mean 'runtime'?)"
        in err
    )
    assert "Traceback" not in err


def test_render_applies_defaults_assigns_ports_and_keeps_secret_references(
    stack: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert main(["render", str(stack), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fast, agent = data["spec"]["tiers"]
    assert (fast["port"], agent["port"]) == (8001, 8010)
    assert fast["env"] == {"HF_TOKEN": "${env:HF_TOKEN}"}
    assert data["spec"]["gateway"]["port"] == 4000 and data["spec"]["gateway"]["enabled"] is True
    assert main(["render", str(stack)]) == 0
    text = capsys.readouterr().out
    assert "hf_secret_value" not in text and "apiVersion: mlxctl/v1" in text


def test_diff_exit_codes_and_missing_secret(
    stack: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["diff", str(stack)]) == 3
    assert "environment variable HF_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "x")
    assert main(["diff", str(stack)]) == 1
    out = capsys.readouterr().out
    assert "+ fast" in out and "+ gateway" in out
    assert "x agent" in out and "is not present at /models/tiny" in out
    assert main(["diff", str(stack), "-o", "json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["type"] == "version" and records[-1]["type"] == "summary"
    assert {r["target"] for r in records if r["type"] == "blocked"} == {"agent"}


def test_reconcile_dry_run_acts_on_nothing(stack: Path, mlxctl_home: Path) -> None:
    stack.write_text(stack.read_text().replace('env: {HF_TOKEN: "${env:HF_TOKEN}"}', ""))
    assert main(["reconcile", "--once", "--dry-run", str(stack)]) == 0
    assert not (mlxctl_home / "state" / "inventory.json").exists()


def test_logs_of_an_unknown_tier_is_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "nope"]) == 7
    assert capsys.readouterr().err.startswith("error: no log for 'nope'")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "--no-such-flag"]) == 2
    assert main(["events", "-o", "json"]) == 0


def test_events_filters_without_a_controller(
    mlxctl_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlxctl.apply.events import Event, EventLog
    from mlxctl.paths import default_paths

    log = EventLog(default_paths().events)
    log.emit(Event(1.0, "start", "fast", "new tier", "ok"))
    cause = {"kind": "oom-killed", "word": "oom-killed", "detail": "killed by the kernel"}
    log.emit(Event(2.0, "crash", "fast", "oom-killed: killed", "failed", exit_cause=cause))
    log.emit(Event(3.0, "crash", "slow", "error: exited", "failed"))
    capsys.readouterr()
    assert main(["events", "--tier", "fast", "--kind", "crash", "-o", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(e["target"], e["exit_cause"]["kind"]) for e in lines] == [("fast", "oom-killed")]
    assert main(["events", "--kind", "oom-killed", "--kind", "error", "-n", "1"]) == 0
    assert "oom-killed: killed" in capsys.readouterr().out
    assert main(["events", "--tier", "nope"]) == 0
    assert capsys.readouterr().out == "no matching events\n"
    assert main(["events", "--kind", "crashed"]) == 2
    assert "unknown event kind 'crashed'" in capsys.readouterr().err


def test_an_over_budget_stack_is_refused_with_exit_8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "big.yaml"
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: big}\nspec:\n"
        "  memory: {budget: 8GB}\n  tiers:\n"
        "    - {name: a, runtime: mlx-lm, model: qwen3-8b, quant: 8bit}\n"
        "    - {name: b, runtime: mlx-lm, model: qwen3-8b, quant: 4bit}\n"
    )
    assert main(["diff", str(stack)]) == 8
    out = capsys.readouterr().out
    assert "over the memory budget of 7.5 GiB" in out and "use 4bit for 'a'" in out
    assert main(["reconcile", "--once", str(stack)]) == 8
    assert "nothing was started" in capsys.readouterr().err


def test_every_command_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (
        "validate",
        "render",
        "diff",
        "reconcile",
        "status",
        "down",
        "logs",
        "events",
        "gateway-key",
        "quickstart",
        "catalog",
        "hardware",
        "init",
    ):
        assert command in out


def test_quickstart_installs_the_bundled_demo_stack_once_and_keeps_edits(tmp_path: Path) -> None:
    from mlxctl.cli.ops_cmds import bundled_stack, install_demo_stack

    stacks = tmp_path / "config" / "stacks"
    installed = install_demo_stack(stacks)
    assert installed == stacks / "demo.yaml"
    assert installed.read_text() == bundled_stack("demo.yaml").read_text()
    installed.write_text(installed.read_text().replace("port: 4000", "port: 4100"))
    assert install_demo_stack(stacks) is None
    assert "port: 4100" in installed.read_text()


def test_no_stack_files_is_said_with_where_mlxctl_looked(
    mlxctl_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["validate"], ["diff"], ["reconcile", "--once"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert f"note: no stack files in {mlxctl_home / 'config' / 'stacks'}" in err, argv
        assert "NAME" not in out  # no empty status table
    empty = mlxctl_home / "elsewhere"
    empty.mkdir()
    assert main(["validate", str(empty)]) == 0
    assert f"note: no stack files in {empty};" in capsys.readouterr().err


def test_gateway_key_before_the_gateway_ever_started_is_not_found(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gateway-key", str(stack)]) == 7
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: no gateway key yet: mlxctl generates it when the gateway first starts "
        "(mlxctl reconcile --once)"
    )


def test_gateway_key_rotate_replaces_the_generated_key_privately(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLXCTL_HOME", str(tmp_path / "home"))
    stack = tmp_path / "s.yaml"
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n"
        "  tiers: [{name: fast, runtime: mlx-lm, model: {path: /m}}]\n"
    )
    assert main(["gateway", "key", "--rotate", str(stack)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["gateway-key", "--rotate", str(stack)]) == 0  # the old spelling works too
    second = capsys.readouterr().out.strip()
    assert first.startswith("sk-mlxctl-") and second.startswith("sk-mlxctl-") and first != second
    key_file = tmp_path / "home" / "state" / "gateway" / "master_key"
    assert key_file.read_text().strip() == second and key_file.stat().st_mode & 0o777 == 0o600
    assert main(["gateway", "key", str(stack)]) == 0
    assert capsys.readouterr().out.strip() == second


def test_gateway_key_rotate_refuses_a_key_the_user_owns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "s.yaml"
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n"
        "  gateway: {masterKey: '${env:MY_KEY}'}\n"
        "  tiers: [{name: fast, runtime: mlx-lm, model: {path: /m}}]\n"
    )
    assert main(["gateway", "key", "--rotate", str(stack)]) == 2
    assert "${env:MY_KEY}" in capsys.readouterr().err


def test_validate_answers_json_valid_or_with_every_problem(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(stack), "-o", "json"]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok == {"valid": True, "files": [str(stack)], "tiers": ["fast", "agent"], "problems": []}
    stack.write_text(STACK.replace("runtime: mlx-lm", "runtim: mlx-lm"))
    assert main(["validate", str(stack), "-o", "json"]) == 3  # the text form's exit code
    out, err = capsys.readouterr()
    bad = json.loads(out)
    assert bad["valid"] is False and err == ""
    assert [p for p in bad["problems"] if "unknown key 'runtim'" in p]


def test_logs_as_json_lines_whole_lines_only(
    mlxctl_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlxctl.cli.ops_cmds import _LogLines

    logs = mlxctl_home / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "fast.log").write_text('one\ntwo {"x": 1}\n')
    assert main(["logs", "fast", "-o", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["line"] for line in lines] == ["one", 'two {"x": 1}']
    assert {line["service"] for line in lines} == {"fast"}
    # Following: text arrives in pieces; a line is emitted once its end has come.
    follow = _LogLines("fast", json_out=True)
    follow.write("thr")
    assert capsys.readouterr().out == ""
    follow.write("ee\nfo")
    follow.write("ur\n")
    shown = [json.loads(line)["line"] for line in capsys.readouterr().out.splitlines()]
    assert shown == ["three", "four"]


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_service_dry_runs_as_json(platform: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["service", "install", "--dry-run", "--platform", platform, "-o", "json"]) == 0
    install = json.loads(capsys.readouterr().out)
    assert install["platform"] == platform and install["mode"] == "0644"
    assert install["file"].endswith(("io.mlxctl.controller.plist", "mlxctl.service"))
    assert "mlxctl" in install["content"] and install["commands"]
    assert main(["service", "uninstall", "--dry-run", "--platform", platform, "-o", "json"]) == 0
    uninstall = json.loads(capsys.readouterr().out)
    assert ["rm", install["file"]] in uninstall["commands"]


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "STACK"], ["render", "STACK"], ["diff", "STACK"], ["status", "STACK"],
        ["ps", "STACK"], ["doctor", "STACK"], ["events"], ["hardware"], ["catalog", "ls"],
        ["catalog", "show", "qwen3-8b"], ["models", "ls"], ["service", "status"],
        ["status", "--help"],
    ],
    ids=" ".join,
)  # fmt: skip
def test_no_colour_off_a_terminal(
    args: list[str],
    stack: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Output captured (a pipe, a file) carries no terminal codes: colour, progress bars
    and charts are for terminals only."""
    for name in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    main([str(stack) if a == "STACK" else a for a in args])
    out, err = capsys.readouterr()
    assert out.strip() or err.strip()
    assert "\x1b[" not in out and "\x1b[" not in err
