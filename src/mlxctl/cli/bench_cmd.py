"""``mlxctl bench TIER``: latency percentiles and throughput at several concurrencies,
through the gateway and direct, against the memory-bandwidth ceiling."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mlxctl.cli.common import CLOCK, emit_json, err, files_option, load_selected, paths, targets
from mlxctl.cli.completion import complete_tiers
from mlxctl.errors import ExitCode, MlxctlError


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        levels = ()
    if not levels or any(not 1 <= n <= 256 for n in levels):
        raise MlxctlError(
            f"--concurrency {text!r}: write levels from 1 to 256 like 1,2,4,8",
            exit_code=ExitCode.USAGE,
        )
    return tuple(sorted(set(levels)))


def bench(
    tier: str,
    files: tuple[Path, ...] = (),
    concurrency: str = "1,2,4,8",
    requests: int = 8,
    prompt_tokens: int = 256,
    max_tokens: int = 128,
    bandwidth: float | None = None,
    only: str = "both",
    save: bool = True,
    output: str = "text",
    plot: Path | None = None,
) -> int:
    """Measure TIER: TTFT, TPOT, ITL, E2E percentiles and tok/s at each concurrency,
    through the gateway and direct to the tier, and the share of the machine's
    memory-bandwidth ceiling reached. Results are saved per machine and model. On a
    terminal a chart of tok/s against concurrency follows the table; --plot writes it
    as an SVG file.
    """
    from mlxctl.app import bench as use_case
    from mlxctl.capacity.detect import detect_hardware

    if requests < 1 or prompt_tokens < 1 or max_tokens < 1:
        raise MlxctlError(
            "--requests, --prompt-tokens and --max-tokens must be at least 1",
            exit_code=ExitCode.USAGE,
        )
    if bandwidth is not None and not 0 < bandwidth < 100_000:
        raise MlxctlError("--bandwidth is in GB/s, e.g. 273", exit_code=ExitCode.USAGE)
    if plot is not None and plot.suffix.lower() != ".svg":
        raise MlxctlError(
            f"--plot {plot}: the plot is an SVG file (FILE.svg); a browser shows it",
            exit_code=ExitCode.USAGE,
        )
    settings = use_case.Settings(
        concurrency=_levels(concurrency),
        requests=requests,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        paths=("gateway", "direct") if only == "both" else (only,),
    )
    stack = load_selected(targets(None, files))
    hardware = detect_hardware()
    with _progress(output == "text" and sys.stderr.isatty()) as progress:
        document = use_case.run(
            paths(), stack, tier, settings, clock=CLOCK, hardware=hardware,
            stated_bandwidth=bandwidth, progress=progress, note=err,
        )  # fmt: skip
    if save:
        where = use_case.save(paths(), document)
        err(f"saved: {where}")
    if plot is not None:
        write_plot(plot, document)
    if output == "json":
        emit_json(document)
    else:
        print(render(document))
        show_chart(document)
    failed = sum(r["failed"] for r in document["runs"])
    return int(ExitCode.APPLY_FAILED if failed else ExitCode.OK)


def write_plot(plot: Path, document: dict[str, Any]) -> None:
    from mlxctl.cli.bench_plot import svg

    try:
        plot.write_text(svg(document), encoding="utf-8")
    except OSError as exc:
        raise MlxctlError(f"cannot write the plot {plot}: {exc.strerror or exc}") from None
    err(f"plot: {plot}")


def show_chart(document: dict[str, Any]) -> None:
    """The chart after the table, on a terminal only (as colour: rich decides, so
    FORCE_COLOR shows it and NO_COLOR keeps it plain); a pipe or a log gets the table."""
    if len(document["settings"]["concurrency"]) < 2:
        return  # one level: the table says it all
    from rich.console import Console

    console = Console(file=sys.stdout)
    if console.is_terminal:
        from mlxctl.cli.bench_plot import terminal_chart

        console.print()
        console.print(terminal_chart(document, width=max(20, min(60, console.width - 40))))


class _progress:
    """A rich progress bar on a terminal (stderr), else nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.tasks: dict[tuple[str, int], Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.bar.start()
        return self.update

    def update(self, path: str, level: int, done: int, total: int) -> None:
        key = (path, level)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{path:<7} x{level}", total=total)
        self.bar.update(self.tasks[key], completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _ms(dist: dict[str, Any] | None, key: str = "p50") -> str:
    return "-" if not dist else f"{dist[key]:.0f}" if dist[key] >= 10 else f"{dist[key]:.1f}"


def _size(n: int) -> str:
    """Bytes in decimal units, as bandwidth is published (GB/s)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def render(doc: dict[str, Any]) -> str:
    """The report as text: the ceiling, one row per path and concurrency, the gateway's share."""
    lines = [
        f"{doc['tier']}: {doc['model']['display']} on {doc['hardware']['chip']} "
        f"({doc['hardware']['profile_id']})",
    ]
    bw = doc["bandwidth"]
    ceiling = doc["ceiling"]
    s = doc["settings"]
    if ceiling is not None:
        one = ceiling["tok_s"].get("1")
        lines.append(
            f"ceiling: {bw['gbps'] if bw['gbps'] is not None else '?'} GB/s / "
            f"{_size(ceiling['bytes_per_token'])} per token (weights "
            f"{_size(ceiling['weights_bytes'])} + KV cache "
            f"{_size(ceiling['kv_bytes_per_sequence'])} at {ceiling['context_tokens']} tokens)"
            + (f" = {one:.1f} tok/s for one stream" if one else ": tok/s unknown")
        )
        if ceiling["moe_counts_all_experts"]:
            lines.append("  (mixture of experts: all experts counted; the true ceiling is higher)")
    else:
        lines.append(f"ceiling: unknown ({doc['ceiling_unknown_because']})")
    lines.append(f"bandwidth: {bw['source']}")
    done = sum(r["completed"] for r in doc["runs"])
    sent = sum(r["total_prompt_tokens"] for r in doc["runs"])
    counted = f" ({sent / done:.0f} counted by the server)" if done and sent else ""
    lines.append(
        f"{s['requests']} requests per level, ~{s['prompt_tokens']} prompt tokens{counted}, "
        f"up to {s['max_tokens']} generated; latencies in ms, p50/p90/p99"
    )
    header = (
        "path", "conc", "ok", "TTFT", "TPOT", "ITL", "E2E", "prompt tok/s", "gen tok/s",
        "aggregate tok/s", "ceiling", "share",
    )  # fmt: skip
    rows = [header]
    for run in doc["runs"]:
        m = run["metrics"]

        def trio(name: str, m: dict[str, Any] = m) -> str:
            d = m.get(name)
            return "-" if not d else "/".join(_ms(d, k) for k in ("p50", "p90", "p99"))

        rows.append(
            (
                run["path"], str(run["concurrency"]),
                f"{run['completed']}/{run['completed'] + run['failed']}",
                trio("ttft_ms"), trio("tpot_ms"), trio("itl_ms"), trio("e2e_ms"),
                _num((m.get("prompt_tps") or {}).get("p50"), "{:.0f}"),
                _num((m.get("generation_tps") or {}).get("p50")),
                _num(run["output_throughput"]),
                _num(run["ceiling_tps"]),
                _num(run["share"] * 100 if run["share"] is not None else None, "{:.0f}%"),
            )
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for level, added in doc["gateway_added"].items():
        ttft = added.get("ttft_ms_p50_added")
        e2e = added.get("e2e_ms_p50_added")
        lines.append(
            f"gateway adds at x{level}: TTFT p50 {_num(ttft, '{:+.1f}')} ms, "
            f"E2E p50 {_num(e2e, '{:+.1f}')} ms"
        )
    errors = sorted({e for r in doc["runs"] for e in r["errors"]})
    lines += [f"error: {e}" for e in errors]
    lines.append(
        "share: decode tok/s (streams x per-stream median) / ceiling; "
        "aggregate: all output tokens / wall time"
    )
    return "\n".join(lines)


def register(app: click.Group) -> None:
    command = bench
    for option in reversed(
        (
            files_option("A stack file to read (repeatable; default: your stacks directory)."),
            click.option("--concurrency", "-c", default="1,2,4,8", show_default=True,
                         help="Concurrency levels, comma-separated."),
            click.option("--requests", "-n", default=8, show_default=True,
                         help="Requests per level (at least the level)."),
            click.option("--prompt-tokens", default=256, show_default=True,
                         help="About this many prompt tokens per request."),
            click.option("--max-tokens", default=128, show_default=True,
                         help="Tokens to generate per request (at most)."),
            click.option("--bandwidth", type=float, default=None,
                         help="Memory bandwidth in GB/s, where the hardware profile has none."),
            click.option("--only", type=click.Choice(["both", "gateway", "direct"]),
                         default="both", show_default=True, help="Which path to measure."),
            click.option("--save/--no-save", default=True, show_default=True,
                         help="Keep the results in the state directory."),
            click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                         show_default=True, help="Output format."),
            click.option("--plot", type=click.Path(path_type=Path, dir_okay=False),
                         default=None, metavar="FILE.svg",
                         help="Also draw tok/s against concurrency into this SVG file."),
        )
    ):  # fmt: skip
        command = option(command)
    app.command("bench")(click.argument("tier", shell_complete=complete_tiers)(command))
