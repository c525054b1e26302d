"""Stack files: validation errors carry file:line:column and a "did you mean"."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlxctl.errors import SpecError
from mlxctl.spec.loader import load_stack_set

HEAD = "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n"


def write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_stack_set([path])
    return err.value.problems


def test_unknown_key_points_at_the_key_with_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
      tiers:
        - name: fast
          runtime: mlx-lm
          model: {path: /m}
          argz: {max-tokens: 1}
    """,
    )
    assert problems(path) == [
        f"{path}:9:7: spec.tiers[0].argz: unknown key 'argz' (did you mean 'args'?)"
    ]


def test_bad_value_points_at_the_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
      tiers:
        - name: fast
          runtime: mlx-llm
          model: {path: /m}
    """,
    )
    [problem] = problems(path)
    assert problem.startswith(f"{path}:7:16: spec.tiers[0].runtime: ")
    assert "'mlx-lm' or 'vllm-mlx'" in problem and "got 'mlx-llm'" in problem


def test_a_key_spelled_like_pydantics_key_marker_is_an_unknown_key(tmp_path: Path) -> None:
    # Found by the fuzz test: pydantic writes "[key]" in an error's location for a dict
    # key's validator; a file's own key "[key]" crashed the message builder.
    path = tmp_path / "s.yaml"
    path.write_text("{'[key]': null}\n")
    assert problems(path)[-1] == (
        f"{path}:1:2: ['[key]']: unknown key '[key]' "
        "(expected one of: apiVersion, kind, metadata, spec)"
    )


def test_model_mapping_typo_reports_only_the_mapping_branch(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
      tiers:
        - {name: fast, runtime: mlx-lm, model: {paht: /m}}
    """,
    )
    found = problems(path)
    assert any("unknown key 'paht' (did you mean 'path'?)" in p for p in found)
    assert not any("valid string" in p for p in found)


def test_missing_key_and_yaml_syntax_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "tiers:\n  - {name: fast, model: {path: /m}}\n")
    assert any("missing required key 'runtime'" in p for p in problems(path))
    broken = tmp_path / "b.yaml"
    broken.write_text("apiVersion: [\n")
    [problem] = problems(broken)
    assert problem.startswith(f"{broken}:") and ": yaml: " in problem


def test_reserved_name_secrets_in_args_and_managed_flags_are_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
      tiers:
        - {name: gateway, runtime: mlx-lm, model: {path: /m}}
        - {name: a, runtime: mlx-lm, model: {path: /m}, args: {api-key: "${env:KEY}"}}
        - {name: b, runtime: mlx-lm, model: {path: /m}, args: {port: 9}}
        - {name: c, runtime: mlx-lm, model: {path: /m}, env: {"1X": y}}
      gateway: {masterKey: sk-literal}
    """,
    )
    text = "\n".join(problems(path))
    assert "reserved" in text
    assert "secrets go in env" in text
    assert "'port' is set by mlxctl" in text
    assert "not a valid environment variable name" in text
    assert "master key must be a reference" in text


def test_empty_files_are_reported_not_failed(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    stack = load_stack_set([tmp_path])
    assert stack.empty_files == (tmp_path / "empty.yaml",) and stack.tiers == ()


def test_dot_files_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "tiers: []\n", ".s.yaml.swp")
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "notes.txt").write_text("garbage: [")
    assert load_stack_set([tmp_path]).files == ()


def test_gateway_set_differently_in_two_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "gateway: {port: 4000}\n", "a.yaml")
    write(tmp_path, "gateway: {port: 4001}\n", "b.yaml")
    with pytest.raises(SpecError, match=r"spec\.gateway differs"):
        load_stack_set([tmp_path])


def test_missing_target_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_stack_set([tmp_path / "nope.yaml"])
