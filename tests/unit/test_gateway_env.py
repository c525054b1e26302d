"""``mlxctl gateway env --client ...``: each client's settings, the key as a reference."""

from __future__ import annotations

import json
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from mlxctl.app.client_env import render, shell_key
from mlxctl.cli import main
from mlxctl.errors import NotFoundError
from mlxctl.spec.loader import load_stack_set
from mlxctl.spec.stack_set import StackSet


def stack(tmp_path: Path, gateway: str = "{port: 4100}", extra: str = "") -> StackSet:
    path = tmp_path / "stack.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            apiVersion: mlxctl/v1
            kind: Stack
            metadata: {{name: s}}
            spec:
              gateway: {gateway}
              tiers:
                - {{name: fast, runtime: mlx-lm, model: qwen3-14b, port: 8001,
                   aliases: [gpt-4o-mini], context: 16384}}
            """)
        + extra
    )
    return load_stack_set([path])


def shell_env(exports: str, **environ: str) -> dict[str, str]:
    script = exports + '\npython3 -c "import json, os; print(json.dumps(dict(os.environ)))"'
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "stale", **environ},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_openai_exports_the_base_url_a_key_reference_and_the_model(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "gateway").mkdir(parents=True)
    (state / "gateway" / "master_key").write_text("sk-generated\n")
    out = render("openai", stack(tmp_path), state)
    assert "sk-generated" not in out.text  # the file is referenced, never printed
    env = shell_env(out.text)
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:4100/v1"
    assert env["OPENAI_API_KEY"] == "sk-generated"
    assert env["OPENAI_MODEL"] == "fast"
    assert render("openai", stack(tmp_path), state, "gpt-4o-mini").text.endswith(
        "OPENAI_MODEL=gpt-4o-mini\n"
    )


def test_claude_gets_the_base_url_without_v1_a_bearer_token_and_every_model_slot(
    tmp_path: Path,
) -> None:
    out = render("claude", stack(tmp_path, "{port: 4100, masterKey: '${env:MY_KEY}'}"), tmp_path)
    env = shell_env(out.text, MY_KEY="sk-mine")
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4100"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "sk-mine"
    assert "ANTHROPIC_API_KEY" not in env  # would be sent instead of the token
    for slot in ("MODEL", "DEFAULT_OPUS_MODEL", "DEFAULT_SONNET_MODEL", "DEFAULT_HAIKU_MODEL"):
        assert env[f"ANTHROPIC_{slot}"] == "fast"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_codex_gets_a_responses_provider_and_a_profile(tmp_path: Path) -> None:
    out = render("codex", stack(tmp_path), tmp_path / "state")
    config = tomllib.loads(out.text)
    assert config["web_search"] == "disabled"  # else Codex sends a tool no tier runs: 400
    assert config["model_providers"]["mlxctl"] == {
        "name": "mlxctl",
        "base_url": "http://127.0.0.1:4100/v1",
        "env_key": "MLXCTL_GATEWAY_KEY",
        "wire_api": "responses",
    }
    assert config["profiles"]["mlxctl"] == {
        "model": "fast", "model_provider": "mlxctl", "model_context_window": 16384,
    }  # fmt: skip
    assert "export MLXCTL_GATEWAY_KEY=" in out.hint and "codex --profile mlxctl" in out.hint
    # A key the user keeps in a variable already: the provider names that variable.
    mine = render("codex", stack(tmp_path, "{port: 4100, masterKey: '${env:MY_KEY}'}"), tmp_path)
    assert tomllib.loads(mine.text)["model_providers"]["mlxctl"]["env_key"] == "MY_KEY"
    assert "export" not in mine.hint


def test_opencode_gets_a_provider_with_every_name_and_its_limits(tmp_path: Path) -> None:
    out = render("opencode", stack(tmp_path), tmp_path / "state")
    config = json.loads(out.text)
    provider = config["provider"]["mlxctl"]
    assert provider["options"] == {
        "baseURL": "http://127.0.0.1:4100/v1",
        "apiKey": f"{{file:{tmp_path / 'state' / 'gateway' / 'master_key'}}}",
    }
    assert set(provider["models"]) == {"fast", "gpt-4o-mini"}
    assert provider["models"]["fast"]["limit"] == {"context": 16384, "output": 8192}
    assert config["model"] == "mlxctl/fast"
    mine = render("opencode", stack(tmp_path, "{port: 4100, masterKey: '${env:K}'}"), tmp_path)
    assert json.loads(mine.text)["provider"]["mlxctl"]["options"]["apiKey"] == "{env:K}"


def test_a_wildcard_bind_is_reached_on_loopback_and_an_unknown_model_is_refused(
    tmp_path: Path,
) -> None:
    exposed = stack(tmp_path, "{port: 4100, host: 0.0.0.0, masterKey: '${env:K}'}")
    assert "http://127.0.0.1:4100/v1" in render("openai", exposed, tmp_path).text
    with pytest.raises(NotFoundError, match="fast, gpt-4o-mini"):
        render("openai", exposed, tmp_path, "nope")


def test_a_key_reference_becomes_a_quoted_shell_word() -> None:
    assert shell_key("${env:A}") == '"${A}"'
    assert shell_key("${file:/a b/k}") == "\"$(cat '/a b/k')\""
    assert shell_key('pre$"${env:A}') == '"pre\\$\\"${A}"'


def test_the_command_prints_settings_on_stdout_and_where_they_go_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack(tmp_path)
    code = main(["gateway", "env", "--client", "codex", "-f", str(tmp_path / "stack.yaml")])
    out, err = capsys.readouterr()
    assert code == 0
    assert tomllib.loads(out)["profiles"]["mlxctl"]["model"] == "fast"
    assert "config.toml" in err


def test_the_cli_offers_exactly_the_clients_the_use_case_renders() -> None:
    from mlxctl.app.client_env import CLIENTS
    from mlxctl.cli.gateway_env import CLIENTS as OFFERED

    assert OFFERED == CLIENTS
