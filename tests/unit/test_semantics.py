"""GitOps semantics on the fake machine: last-known-good files keep healing, stacks own
their tiers, one bad model blocks one tier, validate rejects what diff rejects, and the
limits the memory estimate assumes reach the servers' command lines."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from mlxctl.cli import main
from mlxctl.errors import SpecError
from mlxctl.plan.actions import PlanOptions
from mlxctl.reconcile.passes import load_stack_keeping_last_good, resolve, run_pass
from mlxctl.spec.loader import load_stack_set
from mlxctl.spec.schema import PathSource
from tests.unit.world import World, tier, tiers_yaml


def stack_doc(name: str, *tiers: str) -> str:
    return tiers_yaml(*tiers).replace("metadata: {name: test}", f"metadata: {{name: {name}}}")


def lkg_pass(w: World):  # type: ignore[no-untyped-def]
    desired = resolve(w.ctx, load_stack_keeping_last_good(w.ctx, [w.stacks], save=True))
    return run_pass(w.ctx, desired, options=PlanOptions())


def test_an_invalid_save_never_stops_healing(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    w.apply()
    pid = w.record("fast").pid
    lkg_pass(w)  # the controller saves the valid file as its last valid version
    w.write(tiers_yaml(tier("fast", 8001)).replace("runtime:", "runtim:"))  # a typo
    w.procs.crash(pid)
    result = lkg_pass(w)
    assert [a.kind for a in result.plan.for_target("fast")][:2] == ["crash", "start"]
    assert list(result.desired.invalid_files) == [w.stacks / "stack.yaml"]
    assert any("runtim" in p for p in result.desired.invalid_files[w.stacks / "stack.yaml"])
    assert w.record("fast").pid != pid  # healed from the last valid version


def test_an_invalid_file_with_no_last_valid_version_prunes_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(stack_doc("main", tier("fast", 8001)))
    w.apply()
    (w.stacks / "stack.yaml").write_text("apiVersion: mlxctl/v1\nkind: [\n")  # never valid here
    result = lkg_pass(w)
    assert [(a.kind, a.reason) for a in result.plan.for_target("fast")] == [("wait", "held")]


def test_a_file_selection_never_prunes_another_stacks_tiers(tmp_path: Path) -> None:
    w = World(tmp_path)
    # "zeta" sorts after "beta": the gateway's routes must not depend on what is applied.
    main_file = w.write(stack_doc("main", tier("zeta", 8001)), "main.yaml")
    w.write(stack_doc("other", tier("beta", 8002)), "a-other.yaml")  # read first
    w.apply()
    assert w.record("beta").stack == "other"
    desired = resolve(w.ctx, load_stack_set([main_file]))
    the_plan = run_pass(w.ctx, desired, options=PlanOptions(), dry_run=True).plan
    assert [a for a in the_plan.actions if a.changes] == []  # no stop, no gateway restart
    assert "beta" in desired.gateway.launch["routes"]  # type: ignore[union-attr]
    # Its own removed tier is still pruned by default.
    main_file.write_text(stack_doc("main", tier("gamma", 8003)))
    desired = resolve(w.ctx, load_stack_set([main_file]))
    stops = [
        a.target
        for a in run_pass(w.ctx, desired, options=PlanOptions(), dry_run=True).plan.actions
        if a.kind == "stop"
    ]
    assert stops == ["zeta"]


def test_one_unreadable_model_config_blocks_only_its_tier(tmp_path: Path) -> None:
    w = World(tmp_path)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d, text in ((good, "{}"), (bad, "{not json")):
        d.mkdir()
        (d / "config.json").write_text(text)
    stack = stack_doc(
        "main", tier("ok", 8001, model=str(good)), tier("broken", 8002, model=str(bad))
    )
    w.write(stack.replace("spec:\n", "spec:\n  memory: {budget: 1.0}\n"))
    w.ctx.memory_bytes = lambda: 10**15
    result = w.apply()
    assert "broken" in result.last.plan.blocked
    assert "config.json: cannot read the model config" in result.last.plan.blocked["broken"]
    assert w.record("ok").ready_at is not None
    assert int(result.exit_code) == 4


def test_a_dependency_cycle_is_an_error_at_its_line(tmp_path: Path) -> None:
    w = World(tmp_path)
    path = w.write(
        tiers_yaml(
            tier("a", 8001) + "  dependsOn: [b]\n",
            tier("b", 8002) + "  dependsOn: [a]\n",
            tier("c", 8003) + "  dependsOn: [d]\n",
        )
    )
    with pytest.raises(SpecError) as exc:
        load_stack_set([path])
    line = path.read_text().splitlines().index("      dependsOn: [d]") + 1
    assert exc.value.problems == [f"{path}:{line}:1: tier 'c': dependsOn: no tier named 'd'"]
    path.write_text(path.read_text().replace("dependsOn: [d]", "dependsOn: []"))
    with pytest.raises(SpecError) as exc:
        load_stack_set([path])
    line = path.read_text().splitlines().index("      dependsOn: [b]") + 1
    assert exc.value.problems == [f"{path}:{line}:1: tier 'a': dependsOn: a cycle: a -> b -> a"]


def test_depends_on_starts_a_tier_after_its_dependency_is_ready(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("app", 8001) + "  dependsOn: [db]\n", tier("db", 8002)))
    first = w.step()
    assert [(a.kind, a.target) for a in first.plan.actions if a.changes] == [
        ("start", "db"),
        ("start", "gateway"),
    ]
    result = w.apply()
    assert result.converged and w.record("app").ready_at is not None


def test_a_suspended_tier_is_left_alone_and_status_says_so(tmp_path: Path) -> None:
    from mlxctl.reconcile.passes import observe_state
    from mlxctl.status.services import build_status

    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    w.apply()
    pid = w.record("fast").pid
    w.write(tiers_yaml(tier("fast", 8001, args="{a: 2}") + "  suspend: true\n"))
    w.procs.crash(pid)
    result = w.apply()
    assert result.converged
    assert [a.kind for a in result.last.plan.for_target("fast")] == ["wait"]
    assert "suspended; on resume: start" in result.last.plan.for_target("fast")[0].cause
    rows = build_status(w.desired(), observe_state(w.ctx, w.desired()))
    assert next(r for r in rows if r.name == "fast").sync == "Suspended"


def test_limits_reach_the_servers_that_have_a_flag(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(
        tiers_yaml(
            tier("big", 8001, runtime="vllm-mlx") + "  context: 4096\n  concurrency: 2\n",
            tier("small", 8002) + "  context: 4096\n  concurrency: 2\n",
        )
    )
    big, small = w.desired().tiers
    assert big.argv[big.argv.index("--max-kv-size") :][:2] == ("--max-kv-size", "4096")
    assert "--max-num-seqs" in big.argv and big.unenforced == ()
    assert "--decode-concurrency" in small.argv
    assert small.unenforced == ("context (mlx-lm has no flag for it)",)


def test_validate_rejects_what_diff_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: mlxctl/v1
            kind: Stack
            metadata: {name: main}
            spec:
              tiers:
                - name: a
                  runtime: mlx-lm
                  model: qwen3-8bb
                - name: b
                  runtime: mlx-lm
                  model: qwen3-8b
                  quant: 4bits
            """
        )
    )
    assert main(["validate", str(path)]) == 3
    err = capsys.readouterr().err
    assert f"{path}:8:7: tier 'a': model: unknown catalog model 'qwen3-8bb'; did you mean" in err
    assert f"{path}:12:7: tier 'b': quant: unknown variant of qwen3-8b '4bits'" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["validate", str(empty)]) == 3
    assert f"{empty}:1:1: the file is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "not_secret", "refused"),
    [
        ("{HF_TOKEN: hf_literal}", "", True),
        ("{OPENAI_API_KEY: sk-1}", "", True),
        ("{DB_PASSWORD: x}", "", True),
        ('{HF_TOKEN: "${env:HF_TOKEN}"}', "", False),
        ("{HF_TOKEN: hf_public_mirror}", "\n      notSecret: [HF_TOKEN]", False),
        ("{HF_HUB_OFFLINE: '1', TOKENIZERS_PARALLELISM: 'false'}", "", False),
    ],
)
def test_literal_secrets_are_refused_unless_marked_not_secret(
    tmp_path: Path, env: str, not_secret: str, refused: bool
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: main}\nspec:\n  tiers:\n"
        "    - name: a\n      runtime: mlx-lm\n      model: {path: /m}\n"
        f"      env: {env}{not_secret}\n"
    )
    if not refused:
        load_stack_set([path])
        return
    with pytest.raises(SpecError) as exc:
        load_stack_set([path])
    (problem,) = exc.value.problems
    assert problem.startswith(f"{path}:9:12: spec.tiers[0].env: env.")
    assert "looks like a secret" in problem and "notSecret" in problem
    assert "hf_literal" not in problem and "sk-1" not in problem  # never echoed


def test_render_is_a_stack_that_plans_nothing_new(tmp_path: Path) -> None:
    from mlxctl.desired.render import canonical_documents, to_yaml
    from mlxctl.reconcile.context import read_ports

    w = World(tmp_path)
    w.write(stack_doc("main", tier("fast", 8001, model="../models/tiny")), "main.yaml")
    w.write(
        stack_doc("other", tier("slow", 8002, runtime="vllm-mlx") + "  context: 4096\n").replace(
            "  tiers:", "  suspend: true\n  tiers:"
        ),
        "other.yaml",
    )
    w.apply()
    stack = load_stack_set([w.stacks])
    rendered = tmp_path / "rendered" / "all.yaml"
    rendered.parent.mkdir()
    rendered.write_text(to_yaml(canonical_documents(stack, read_ports(w.ctx.paths)), stack))
    again = load_stack_set([rendered])  # validates
    first = again.tiers[0].spec.model
    assert isinstance(first, PathSource) and first.path == str(tmp_path / "models" / "tiny")
    before, after = w.desired(), resolve(w.ctx, again)
    assert [s.spec_hash for s in after.services] == [s.spec_hash for s in before.services]
    assert after.suspended_stacks == frozenset({"other"})
    the_plan = run_pass(w.ctx, after, options=PlanOptions(), dry_run=True).plan
    assert not the_plan.has_changes


def test_diff_says_which_limits_the_server_does_not_enforce(tmp_path: Path) -> None:
    from mlxctl.capacity.memory import MemoryEstimate
    from mlxctl.status.report import plan_lines

    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001) + "  context: 4096\n  concurrency: 2\n"))
    desired = w.desired()
    estimate = MemoryEstimate(weights=1, kv_cache=1, overhead=1, total=3, basis="test")
    fast = dataclasses.replace(desired.tiers[0], memory=estimate)
    desired = dataclasses.replace(desired, tiers=(fast,), budget_bytes=10**12)
    the_plan = run_pass(w.ctx, desired, options=PlanOptions(), dry_run=True).plan
    assert plan_lines(the_plan)[-2] == (
        "Not enforced by the servers (the memory estimate assumes it): "
        "context (mlx-lm has no flag for it) for fast."
    )


def test_automatic_ports_skip_ports_in_use_then_stay_stable(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.procs.busy_ports[8001] = "pid 4242 (nginx)"
    w.write(tiers_yaml(tier("fast", 8003).replace("  port: 8003\n", "")))
    w.apply()
    assert w.record("fast").port == 8002  # 8001 is held by another program
    del w.procs.busy_ports[8001]
    w.write(
        tiers_yaml(
            tier("fast", 8003).replace("  port: 8003\n", ""),
            tier("slow", 8003).replace("  port: 8003\n", ""),
        )
    )
    desired = w.desired()
    assert desired.ports == {"fast": 8002, "slow": 8001}  # fast keeps its port


def test_a_flag_written_in_args_wins_over_the_derived_limit(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(
        tiers_yaml(
            tier("big", 8001, runtime="vllm-mlx", args="{max-num-seqs: 8}") + "  concurrency: 2\n"
        )
    )
    (big,) = w.desired().tiers
    assert big.argv.count("--max-num-seqs") == 1
    assert big.argv[big.argv.index("--max-num-seqs") + 1] == "8"


def test_a_plan_that_only_waits_does_not_claim_the_machine_matches() -> None:
    from mlxctl.plan.actions import Action, Plan
    from mlxctl.status.report import summary_line

    waiting = Plan(actions=(Action("wait", "b", "waiting for a (dependsOn)", reason="dependency"),))
    assert summary_line(waiting) == "No changes to apply now; 1 waiting (see above)."
    starting = Plan(actions=(Action("wait", "b", "starting for 2s", reason="starting"),))
    assert summary_line(starting) == "No changes. The machine matches the stack."


def test_a_file_without_gateway_settings_keeps_the_running_gateways(tmp_path: Path) -> None:
    w = World(tmp_path)
    main_file = w.write(
        stack_doc("main", tier("zeta", 8001)).replace(
            "gateway: {port: 4000}", "gateway: {enabled: true}"
        ),
        "main.yaml",
    )
    w.write(
        stack_doc("other", tier("beta", 8002)).replace(
            "gateway: {port: 4000}", 'gateway: {port: 4100, masterKey: "${env:GATEWAY_KEY}"}'
        ),
        "a-other.yaml",
    )
    # main.yaml sets gateway too (enabled only): that setting would move the gateway.
    main_file.write_text(main_file.read_text().replace("  gateway: {enabled: true}\n", ""))
    w.apply()
    assert w.record("gateway").port == 4100
    desired = resolve(w.ctx, load_stack_set([main_file]))
    assert desired.gateway is not None and desired.gateway.port == 4100
    the_plan = run_pass(w.ctx, desired, options=PlanOptions(), dry_run=True).plan
    assert [a for a in the_plan.actions if a.changes] == []


def test_the_controller_reports_an_invalid_file_once_and_when_it_is_valid_again(
    tmp_path: Path,
) -> None:
    from mlxctl.reconcile.controller import Controller

    w = World(tmp_path)
    good = tiers_yaml(tier("fast", 8001))
    path = w.write(good)
    lines: list[str] = []
    ctl = Controller(w.ctx, [w.stacks], PlanOptions(), log=lines.append)
    ctl.run_pass("start")
    path.write_text(good.replace("runtime:", "runtim:"))
    for _ in range(3):
        ctl.run_pass("periodic resync")
    assert sum(line.startswith("invalid: ") for line in lines) == 1
    path.write_text(good)
    ctl.run_pass("changed")
    ctl.run_pass("periodic resync")
    assert [line for line in lines if line.startswith("valid again")] == [f"valid again: {path}"]
    from mlxctl.apply.events import read_events

    reports = [
        e for e in read_events(w.ctx.paths.events) if e.cause in ("invalid file", "valid again")
    ]
    assert [(e.cause, e.result) for e in reports] == [
        ("invalid file", "refused"),
        ("valid again", "ok"),
    ]
    ctl.monitor.stop()
