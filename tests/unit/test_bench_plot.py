"""bench's pictures from a report: the terminal chart and the SVG file."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mlxctl.app.bench import Settings, report
from mlxctl.capacity.memory import KvLayout
from mlxctl.capacity.roofline import Bandwidth, ceiling
from mlxctl.cli import bench_cmd
from mlxctl.cli.bench_plot import nice_top, series, svg, terminal_chart
from tests.unit.test_bench_report import HW, TARGET, level

SVG = "{http://www.w3.org/2000/svg}"


def document(*, bandwidth: float | None = 273.0) -> dict[str, Any]:
    """Levels 1, 2 and 4, both paths; the gateway a little slower per token."""
    bw = Bandwidth(bandwidth, "stated")
    limit = ceiling(4_610_000_000, KvLayout(36, 8, 128), 256, bw, moe=False)
    runs = []
    for n in (1, 2, 4):
        runs += [level("gateway", n, 1 / (52 - 4 * n)), level("direct", n, 1 / (55 - 4 * n))]
    settings = Settings(concurrency=(1, 2, 4), requests=4, prompt_tokens=256, max_tokens=33)
    return report(TARGET, HW, settings, bw, limit if bandwidth else None, "", runs, 0.0)


def aggregate(doc: dict[str, Any], path: str, n: int) -> float:
    run = next(r for r in doc["runs"] if r["path"] == path and r["concurrency"] == n)
    return float(run["output_throughput"])


def test_the_series_are_each_path_and_the_ceiling_per_level() -> None:
    doc = document()
    [gateway, direct, limit] = series(doc)
    assert (gateway.name, direct.name, limit.name) == ("gateway", "direct", "ceiling")
    assert [n for n, _ in gateway.points] == [1, 2, 4]
    assert dict(direct.points)[4] == aggregate(doc, "direct", 4)
    ceilings = dict(limit.points)
    assert ceilings[1] == pytest.approx(58.7, abs=0.1) and ceilings[4] > ceilings[2] > ceilings[1]
    assert [s.name for s in series(document(bandwidth=None))] == ["gateway", "direct"]


def test_the_terminal_chart_draws_a_bar_per_path_and_level_against_the_ceiling() -> None:
    doc = document()
    text = terminal_chart(doc, width=40)
    lines = text.plain.splitlines()
    assert lines[0] == (
        "aggregate generation tok/s against concurrency "
        "(█ gateway, █ direct, │ memory-bandwidth ceiling)"
    )
    rows = lines[1:-1]
    assert [r.split()[0] for r in rows] == ["x1", "direct", "x2", "direct", "x4", "direct"]
    top = max(dict(series(doc)[2].points).values())  # the ceiling at x4 is the largest
    bars = [(p, n) for n in (1, 2, 4) for p in ("gateway", "direct")]
    for row, (path, n) in zip(rows, bars, strict=True):
        value = aggregate(doc, path, n)
        assert f" {value:.1f}" in row
        bar = row[16:57]  # the 41 cells after the labels
        full = bar.count("█")
        assert full == int(value / top * 40 * 8) // 8  # to the eighth, on one scale
        limit = dict(series(doc)[2].points)[n]
        assert bar.index("│") == min(40, round(limit / top * 40))
    assert rows[1].endswith(f"(ceiling {dict(series(doc)[2].points)[1]:.1f})")
    assert lines[-1].rstrip().endswith(f"{top:.0f} tok/s")
    # Each path has its colour, the ceiling its own.
    styles = {str(span.style) for span in text.spans}
    assert {"cyan", "magenta", "red"} <= styles
    plain = terminal_chart(document(bandwidth=None)).plain
    assert "│" not in plain and "ceiling" not in plain


def test_the_svg_parses_and_holds_each_series() -> None:
    doc = document()
    root = ET.fromstring(svg(doc))
    assert root.tag == f"{SVG}svg"
    lines = {p.get("data-series"): p for p in root.iter(f"{SVG}polyline")}
    assert set(lines) == {"gateway", "direct", "ceiling"}
    assert lines["ceiling"].get("stroke-dasharray") == "6 4"
    points = {
        name: [tuple(map(float, xy.split(","))) for xy in line.get("points", "").split()]
        for name, line in lines.items()
    }
    assert all(len(p) == 3 for p in points.values())
    # Levels left to right, evenly; more tok/s is higher (a smaller y).
    xs = [x for x, _ in points["direct"]]
    assert xs == sorted(xs) and xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])
    for i, n in enumerate((1, 2, 4)):
        higher = aggregate(doc, "direct", n) > aggregate(doc, "gateway", n)
        assert (points["direct"][i][1] < points["gateway"][i][1]) == higher
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert f"direct x4: {aggregate(doc, 'direct', 4):.1f} tok/s" in tips
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "concurrency (streams at once)" in texts and "bandwidth ceiling" in texts
    bare = ET.fromstring(svg(document(bandwidth=None)))
    assert [p.get("data-series") for p in bare.iter(f"{SVG}polyline")] == ["gateway", "direct"]


def test_the_svg_escapes_what_it_quotes() -> None:
    doc = document()
    doc["tier"] = 'a<b & "c"'
    root = ET.fromstring(svg(doc))
    assert root.findtext(f"{SVG}title", "").startswith('a<b & "c": ')


@pytest.mark.parametrize(
    ("value", "top"), [(0, 1), (0.3, 0.3), (58.7, 60), (173, 200), (229.4, 250), (500, 500)]
)
def test_the_y_axis_ends_on_a_round_number(value: float, top: float) -> None:
    assert nice_top(value) == pytest.approx(top)


def test_the_chart_is_shown_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = document()
    shown = io.StringIO()
    monkeypatch.setattr(bench_cmd.sys, "stdout", shown)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    bench_cmd.show_chart(doc)
    assert shown.getvalue() == ""  # a pipe, a file: the table alone
    monkeypatch.setenv("FORCE_COLOR", "1")  # what rich reads as a terminal
    bench_cmd.show_chart(doc)
    assert "aggregate generation tok/s against concurrency" in shown.getvalue()
    assert Console(file=io.StringIO()).is_terminal is True  # FORCE_COLOR still set


def test_plot_writes_an_svg_file_or_says_why_not(tmp_path: Path) -> None:
    from mlxctl.errors import MlxctlError

    doc = document()
    target = tmp_path / "bench.svg"
    bench_cmd.write_plot(target, doc)
    assert ET.parse(target).getroot().tag == f"{SVG}svg"
    with pytest.raises(MlxctlError, match="cannot write the plot"):
        bench_cmd.write_plot(tmp_path / "missing" / "bench.svg", doc)


def test_a_ceiling_far_above_the_bars_is_marked_beyond_the_scale() -> None:
    """A tiny model on a CPU: a ceiling 100 times the measured rate would leave slivers;
    the scale stays the bars' and the ceiling is marked at its edge."""
    doc = document(bandwidth=100_000.0)
    text = terminal_chart(doc, width=40).plain
    lines = text.splitlines()
    assert "» beyond the scale" in lines[0]
    most = max(aggregate(doc, p, n) for p in ("gateway", "direct") for n in (1, 2, 4))
    assert lines[-1].rstrip().endswith(f"{most:.0f} tok/s")
    for row in lines[1:-1]:
        assert row[16:57].index("»") == 40 and "│" not in row
    assert "█" * 40 in text  # the largest bar spans the scale


def test_an_svg_ceiling_far_above_the_lines_runs_along_the_top() -> None:
    doc = document(bandwidth=100_000.0)
    root = ET.fromstring(svg(doc))
    lines = {p.get("data-series"): p for p in root.iter(f"{SVG}polyline")}
    tops = {float(xy.split(",")[1]) for xy in lines["ceiling"].get("points", "").split()}
    assert len(tops) == 1  # one height: the top edge
    measured = [float(xy.split(",")[1]) for xy in lines["direct"].get("points", "").split()]
    assert min(measured) > tops.pop()  # below it, and not squashed onto the axis
    notes = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any(n.startswith("the ceiling (") and "far above" in n for n in notes)
