"""A fake machine for reconciler unit tests: real files, fake processes, probes, store and clock.

Passes run one at a time on the calling thread (jobs run inline), and the fake clock
moves only when told, so every test is deterministic and nothing sleeps.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from mlxctl.desired.state import DesiredState
from mlxctl.observe.health import ProbeNow
from mlxctl.paths import Paths
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.reconcile.context import Context
from mlxctl.reconcile.converge import ConvergeResult, OnceRun
from mlxctl.reconcile.passes import PassResult, load_stack, observe_state, resolve, run_pass
from mlxctl.sources.path import path_ref
from mlxctl.spec.stack_set import SourcedTier
from mlxctl.testing.fakes import FakeClock, FakeProber, FakeProcs, FakeStore

# Fake seconds between two passes of a converge run (a readiness answer, a poll).
PASS_GAP = 0.1


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stacks = root / "stacks"
        self.stacks.mkdir(parents=True, exist_ok=True)
        self.models = root / "models"
        self.clock = FakeClock()
        self.procs = FakeProcs(self.clock, state=str(root / "state"))
        self.prober = FakeProber()
        self.store = FakeStore()
        self.environ: dict[str, str] = {"GATEWAY_KEY": "sk-test"}
        self.ctx = Context(
            paths=Paths(config=root / "config", state=root / "state"),
            environ=self.environ,
            clock=self.clock,
            procs=self.procs,
            prober=self.prober,
            store=self.store,
            python=Path("/opt/py/bin/python"),
            model_resolver=self._resolve_model,
            job_spawn=lambda work: work(),
        )
        # One prober for the whole test, so liveness failures count across passes.
        self.ctx.health = ProbeNow(self.prober)

    def _resolve_model(self, tier: SourcedTier) -> Any:
        ref = path_ref(tier)
        self.store.present_ids.add(ref.identity) if ref.directory.name != "missing" else None
        return ref

    def write(self, text: str, name: str = "stack.yaml") -> Path:
        path = self.stacks / name
        path.write_text(textwrap.dedent(text))
        return path

    def desired(self) -> DesiredState:
        return resolve(self.ctx, load_stack([self.stacks]))

    def plan(self, **opts: Any) -> Plan:
        desired = self.desired()
        return plan(desired, observe_state(self.ctx, desired), PlanOptions(**opts))

    def step(self, **opts: Any) -> PassResult:
        """One pass (observe, plan, apply), as the controller runs on each trigger."""
        return run_pass(self.ctx, self.desired(), options=PlanOptions(**opts))

    def apply(self, max_passes: int = 50, **opts: Any) -> ConvergeResult:
        """Passes until converged, failed or stuck, like ``reconcile --once``."""
        return self.converge(self.desired(), PlanOptions(**opts), max_passes=max_passes)

    def converge(
        self, desired: DesiredState, options: PlanOptions, max_passes: int = 50
    ) -> ConvergeResult:
        run = OnceRun(self.clock.time, options)
        for _ in range(max_passes):
            result = run_pass(self.ctx, desired, options=run.options)
            if run.done(result):
                return run.result()
            self.clock.advance(PASS_GAP)
        raise AssertionError(f"not done after {max_passes} passes: {result.plan.actions}")

    def record(self, name: str):  # type: ignore[no-untyped-def]
        return self.ctx.inventory.load()[name]


def tiers_yaml(*tiers: str, gateway: str = "{port: 4000}") -> str:
    body = "\n".join(textwrap.indent(textwrap.dedent(t).strip(), "    ") for t in tiers)
    return (
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: test}\nspec:\n"
        f"  gateway: {gateway}\n  tiers:\n{body}\n"
    )


def tier(
    name: str, port: int, *, runtime: str = "mlx-lm", args: str = "{}", model: str = "/models/tiny"
) -> str:
    return (
        f"- name: {name}\n  runtime: {runtime}\n  model: {{path: {model}}}\n"
        f"  port: {port}\n  args: {args}\n"
    )
