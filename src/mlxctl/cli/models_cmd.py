"""``mlxctl models ls|pull|rm|gc|update``: the model store (logic in :mod:`mlxctl.app.models`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlxctl.cli.common import (
    CLOCK,
    emit_json,
    err,
    files_option,
    output_option,
    paths,
    stack_selection,
    targets,
)
from mlxctl.cli.completion import complete_tiers
from mlxctl.errors import ExitCode

if TYPE_CHECKING:
    from mlxctl.app.models import StoredModel
    from mlxctl.machine.interfaces import JobProgress, ProgressFn
    from mlxctl.spec.stack_set import StackSet


def _stack(path: Path | None, files: tuple[Path, ...]) -> StackSet | None:
    from mlxctl.app.stacks import load

    chosen = targets(path, files)
    return load(chosen) if chosen else None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _label(m: StoredModel) -> str:
    """``org/repo@0123456789ab``, ``NAME``, or the partial downloads of ``org/repo``."""
    if m.kind == "incomplete":
        return f"interrupted downloads of {m.name}"
    return f"{m.name}{'@' + m.revision[:12] if m.revision else ''}"


def ls(path: Path | None = None, files: tuple[Path, ...] = (), output: str = "text") -> int:
    """Every model on disk (hub cache, converted store): size, revision, which tiers use it."""
    from mlxctl.app.models import list_models

    models = list_models(paths(), _stack(path, files))
    if output == "json":
        emit_json({"models": [m.to_json() for m in models]})
        return int(ExitCode.OK)
    if not models:
        print("no models in the hub cache or the converted store")
        return int(ExitCode.OK)
    rows = [("MODEL", "REVISION", "SIZE", "USED BY", "NOTE")]
    for m in models:
        used = ", ".join(m.tiers) or "-"
        if m.running:
            used += f" (running: {', '.join(m.running)})"
        note = []
        if m.kind == "converted":
            note.append("converted")
        elif m.kind == "incomplete":
            note.append("interrupted download (gc collects it)")
        if m.kind != "converted" and not m.pulled_by_mlxctl:
            note.append("not pulled by mlxctl")
        if m.refs:
            note.append("refs: " + ",".join(m.refs))
        if not m.tiers:
            note.append("unused")
        rows.append((m.name, m.revision[:12] or "-", _size(m.size), used, "; ".join(note)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return int(ExitCode.OK)


def _reporter(output: str) -> tuple[ProgressFn, Callable[[], None]]:
    """Progress as a bar on a terminal, else plain lines (at most one a second) or JSON."""

    if output == "json":

        def as_json(p: JobProgress) -> None:
            emit_json({"kind": "progress", "step": p.step, "done": p.done, "total": p.total})

        return as_json, lambda: None
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=False,
        )
        bar.start()
        task = bar.add_task("pulling", total=None)

        def on_bar(p: JobProgress) -> None:
            bar.update(task, description=p.step[:50], completed=p.done or 0, total=p.total)

        return on_bar, bar.stop
    last_time = [0.0]
    last_kind = [""]

    def as_lines(p: JobProgress) -> None:
        now = CLOCK.monotonic()
        kind = p.step.split(" ", 1)[0]
        if now - last_time[0] < 1.0 and kind == last_kind[0] and p.done != p.total:
            return
        last_time[0], last_kind[0] = now, kind
        amount = f" {_size(p.done or 0)} / {_size(p.total)}" if p.total else ""
        err(f"{p.step}{amount}")

    return as_lines, lambda: None


def pull(
    source: str | None = None,
    quant: str | None = None,
    path: Path | None = None,
    files: tuple[Path, ...] = (),
    output: str = "text",
) -> int:
    """Download and verify a model: hf:org/repo[@revision], org/repo, or a catalog id.

    Without SOURCE: every tier's model of the stack (-f FILE), as reconcile would
    produce it (pinned, pulled, verified, converted), without starting anything.
    """
    from mlxctl.app.models import parse_reference
    from mlxctl.app.models import pull as do_pull

    if source is None:
        return _pull_stack(path, files, output)
    ref = parse_reference(source, quant)
    progress, done = _reporter(output)
    try:
        result = do_pull(ref, paths(), stack=_stack(path, files), progress=progress)
    finally:
        done()
    if output == "json":
        emit_json(
            {
                "kind": "pulled",
                "repo": result.repo,
                "requested": result.requested,
                "revision": result.revision,
                "path": str(result.path),
                "size": result.size,
                "lock_file": str(result.lock_file) if result.lock_file else None,
            }
        )
    else:
        locked = f", pinned in {result.lock_file}" if result.lock_file else ""
        print(
            f"{result.repo}@{result.revision[:12]} verified ({_size(result.size)}) "
            f"at {result.path}{locked}"
        )
    return int(ExitCode.OK)


def _pull_stack(path: Path | None, files: tuple[Path, ...], output: str) -> int:
    from mlxctl.app.models import pull_stack
    from mlxctl.cli.common import load_selected

    stack = load_selected(targets(path, files))
    progress, done = _reporter(output)
    try:
        pulled = pull_stack(stack, paths(), progress=progress)
    finally:
        done()
    for item in pulled:
        if output == "json":
            emit_json(
                {
                    "kind": "pulled",
                    "tier": item.tier,
                    "model": item.model.display,
                    "revision": item.model.revision or None,
                    "path": str(item.path),
                    "already_present": item.already_present,
                }
            )
        else:
            state = "already present" if item.already_present else "ready"
            print(f"{item.tier}: {item.model.display} {state} at {item.path}")
    return int(ExitCode.OK)


def rm(
    source: str,
    quant: str | None = None,
    path: Path | None = None,
    files: tuple[Path, ...] = (),
    output: str = "text",
) -> int:
    """Delete a model from the hub cache or the converted store (not while a tier runs it)."""
    from mlxctl.app.models import find_stored, list_models, remove

    models = find_stored(source, list_models(paths(), _stack(path, files)), quant)
    freed = remove(models, paths())
    if output == "json":
        emit_json({"removed": [m.to_json() for m in models], "freed": freed})
    else:
        for m in models:
            print(f"removed {_label(m)} ({m.path})")
        print(f"freed {_size(freed)}")
    return int(ExitCode.OK)


def gc(
    path: Path | None = None,
    files: tuple[Path, ...] = (),
    yes: bool = False,
    include_foreign: bool = False,
    output: str = "text",
) -> int:
    """Models no stack references: listed (dry run), deleted with --yes."""
    from mlxctl.app.models import ensure_stack_valid
    from mlxctl.app.models import gc as do_gc

    stack = _stack(path, files)
    ensure_stack_valid(stack)
    assert stack is not None
    result = do_gc(paths(), stack, delete=yes, include_foreign=include_foreign)
    if output == "json":
        emit_json(
            {
                "deleted": result.deleted,
                "freed": result.freed,
                "models": [m.to_json() for m in result.candidates],
                "not_pulled_by_mlxctl": [m.to_json() for m in result.skipped_foreign],
            }
        )
        return int(ExitCode.OK)
    verb = "removed" if yes else "would remove"
    for m in result.candidates:
        print(f"{verb} {_label(m)} ({_size(m.size)})")
    if not result.candidates:
        print("nothing to collect")
    elif not yes:
        print(f"{_size(result.freed)} would be freed; run with --yes to delete")
    else:
        print(f"freed {_size(result.freed)}")
    if result.skipped_foreign:
        err(
            f"note: {len(result.skipped_foreign)} unused cache entr(y/ies) were not pulled by "
            "mlxctl and are kept (--include-foreign to collect them too)"
        )
    return int(ExitCode.OK)


def update(tiers: tuple[str, ...] = (), files: tuple[Path, ...] = (), output: str = "text") -> int:
    """Re-resolve the hub revisions of TIERs (all when none) and rewrite the lock files."""
    from mlxctl.cli.common import controller, explicit_files, load_selected

    client = controller()
    if client is not None:
        body = {"tiers": list(tiers), "files": explicit_files(None, files)}
        changes = client.call("POST", "/v1/models/update", body, timeout=None)["changes"]
    else:
        from mlxctl.app.models import update_locks

        stack = load_selected(targets(None, files))
        changes = [
            {
                "tier": c.tier,
                "repo": c.repo,
                "requested": c.requested,
                "old": c.old,
                "new": c.new,
                "lock_file": str(c.lock_file),
            }
            for c in update_locks(stack, paths(), tiers)
        ]
    if output == "json":
        emit_json({"changes": changes})
        return int(ExitCode.OK)
    for c in changes:
        old = c["old"][:12] if c["old"] else "(not locked)"
        print(
            f"{c['tier']}: {c['repo']}@{c['requested']} revision {old} -> {c['new'][:12]} "
            f"({c['lock_file']})"
        )
    if not changes:
        print("every locked revision is current")
    return int(ExitCode.OK)


def register(app: click.Group) -> None:
    @app.group("models")
    def models() -> None:
        """The models on disk: list, pull, remove, collect, update the lock files."""

    quant = click.option("--quant", help="A catalog variant (with a catalog id).")
    models.command("ls")(stack_selection(output_option(ls)))
    # SOURCE is optional: without it, every tier's model of the stack (-f FILE or the
    # default stacks directory) is pulled.
    pull_cmd = files_option(
        "A stack file whose tiers reference SOURCE, or whose models to pull (repeatable)."
    )(quant(output_option(pull)))
    models.command("pull")(click.argument("source", required=False)(pull_cmd))
    models.command("rm")(click.argument("source")(quant(stack_selection(output_option(rm)))))
    gc_cmd = click.option("--yes", is_flag=True, help="Delete (the default is a dry run).")(gc)
    gc_cmd = click.option(
        "--include-foreign",
        is_flag=True,
        help="Also collect cache entries mlxctl did not download.",
    )(gc_cmd)
    models.command("gc")(stack_selection(output_option(gc_cmd)))
    update_cmd = files_option("A stack file to read (repeatable); default: the stacks directory.")(
        output_option(update)
    )
    tiers = click.argument("tiers", nargs=-1, shell_complete=complete_tiers)
    models.command("update")(tiers(update_cmd))
