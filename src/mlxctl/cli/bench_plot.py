"""bench's pictures: aggregate generation tok/s against concurrency, through the gateway
and direct, beside the memory-bandwidth ceiling: a chart for the terminal and an SVG file.

Both are pure functions of the report document (what ``mlxctl bench -o json`` prints
and the state directory keeps), so a saved result draws the same picture. The chart is
rich text (bars of eighth blocks, coloured per path, the ceiling a mark on each level's
scale); the CLI prints it only on a terminal, where colour goes too. The SVG is written
by hand: a few polylines need no plotting library (matplotlib would weigh more than
mlxctl), and it is one self-contained file any browser shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from rich.text import Text

PATHS = ("gateway", "direct")
CEILING = "ceiling"
# The terminal's colours and the SVG's, per series.
STYLES = {"gateway": "cyan", "direct": "magenta", CEILING: "red"}
COLOURS = {"gateway": "#1f77b4", "direct": "#d62790", CEILING: "#d62728"}
# Eighths of a character cell, for bars finer than whole cells.
EIGHTHS = " ▏▎▍▌▋▊▉█"
MARK = "│"
BEYOND = "»"
# A ceiling more than this many times the largest bar is drawn beyond the scale.
OFF_SCALE = 4.0


@dataclass(frozen=True)
class Series:
    """One line of the picture: (concurrency, tok/s) points, in level order."""

    name: str  # "gateway", "direct" or "ceiling"
    points: tuple[tuple[int, float], ...]


def series(doc: dict[str, Any]) -> list[Series]:
    """The measured paths' aggregate tok/s per level, then the ceiling where it is known."""
    runs = doc["runs"]
    found = []
    for path in PATHS:
        points = tuple(
            (int(r["concurrency"]), float(r["output_throughput"]))
            for r in runs
            if r["path"] == path
        )
        if points:
            found.append(Series(path, points))
    ceiling: dict[int, float] = {}
    for r in runs:
        if r.get("ceiling_tps") is not None:
            ceiling.setdefault(int(r["concurrency"]), float(r["ceiling_tps"]))
    if ceiling:
        found.append(Series(CEILING, tuple(sorted(ceiling.items()))))
    return found


# -- the terminal chart --------------------------------------------------------------------


def _bar(cells: float) -> str:
    """``cells`` character cells of bar, to the eighth (at least a sliver when above 0)."""
    eighths = round(cells * 8)
    if cells > 0 and eighths == 0:
        eighths = 1
    return "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")


def terminal_chart(doc: dict[str, Any], width: int = 40) -> Text:
    """Aggregate tok/s per level as one bar per path, all on one scale; the level's
    ceiling is a mark (│) on that scale, so the gap to the physical limit shows."""
    from rich.text import Text

    drawn = series(doc)
    measured = {s.name: dict(s.points) for s in drawn if s.name != CEILING}
    ceiling = next((dict(s.points) for s in drawn if s.name == CEILING), {})
    most = max([v for points in measured.values() for v in points.values()] + [1e-9])
    # A ceiling far above every bar (a tiny model, a CPU) would squash them into slivers:
    # then the scale is the bars', and a ceiling beyond it is marked at the edge.
    top = max([most, *ceiling.values()])
    if top > OFF_SCALE * most:
        top = most
    text = Text("aggregate generation tok/s against concurrency (")
    for i, name in enumerate(measured):
        text.append(", " if i else "")
        text.append("█", style=STYLES[name])
        text.append(f" {name}")
    if ceiling:
        text.append(", ")
        text.append(MARK, style=STYLES[CEILING])
        text.append(" memory-bandwidth ceiling")
        if max(ceiling.values()) > top:
            text.append(", ")
            text.append(BEYOND, style=STYLES[CEILING])
            text.append(" beyond the scale")
    text.append(")\n")
    levels = sorted({level for points in measured.values() for level in points})
    for level in levels:
        rows = [(name, points[level]) for name, points in measured.items() if level in points]
        for i, (name, value) in enumerate(rows):
            text.append(f"  {f'x{level}' if i == 0 else '':<5} {name:<7} ")
            cells = list(_bar(value / top * width).ljust(width + 1))
            styles = [STYLES[name]] * len(cells)
            if level in ceiling:
                at = min(width, round(ceiling[level] / top * width))
                mark = BEYOND if ceiling[level] > top else MARK
                cells[at], styles[at] = mark, STYLES[CEILING]
            for char, style in zip(cells, styles, strict=True):
                text.append(char, style=style if char.strip() else None)
            text.append(f" {value:.1f}")
            if level in ceiling and i == len(rows) - 1:
                text.append(f"  (ceiling {ceiling[level]:.1f})", style="dim")
            text.append("\n")
    text.append(f"  {'':5} {'':7} 0{f'{top:.0f} tok/s':>{width}}")
    return text


# -- the SVG file --------------------------------------------------------------------------

W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 72, 170, 56, 56


# The y axis ends on one of these times a power of ten (its fifths are round too).
STEPS = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)


def nice_top(value: float) -> float:
    """The smallest round number (:data:`STEPS`) at or above ``value``: the y axis's top."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in STEPS:
        if step * power >= value * (1 - 1e-9):
            return float(step * power)
    return float(10 * power)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def svg(doc: dict[str, Any]) -> str:
    """The picture as a standalone SVG document: levels evenly spaced on x, tok/s from 0
    on y, one polyline with dots per path and a dashed one for the ceiling."""
    drawn = series(doc)
    levels = sorted({level for s in drawn for level, _ in s.points})
    most = max([v for s in drawn if s.name != CEILING for _, v in s.points] + [0.0])
    limits = [v for s in drawn if s.name == CEILING for _, v in s.points]
    # As in the terminal: a ceiling far above the lines is drawn along the top edge
    # (said under the title) rather than flattening them.
    above = bool(limits) and max(limits) > OFF_SCALE * most
    top = nice_top(most if above else max([most, *limits]))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(level: int) -> float:
        if len(levels) == 1:
            return LEFT + plot_w / 2
        return LEFT + levels.index(level) * plot_w / (len(levels) - 1)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(value, top) / top)

    hw = doc["hardware"]
    title = f"{doc['tier']}: {doc['model']['display']} on {hw['chip']} ({hw['profile_id']})"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT}" y="42">aggregate generation tok/s against concurrency '
        f"({doc['settings']['requests']} requests per level, up to "
        f"{doc['settings']['max_tokens']} tokens each)</text>",
    ]
    if above:
        out.append(
            f'<text x="{LEFT + 8}" y="{TOP + 16}" fill="{COLOURS[CEILING]}">the ceiling '
            f"({min(limits):.0f} to {max(limits):.0f} tok/s) is far above: drawn along the "
            "top</text>"
        )
    for i in range(6):  # y grid and ticks
        value = top * i / 5
        at = y(value)
        out.append(
            f'<line x1="{LEFT}" y1="{at:.1f}" x2="{LEFT + plot_w}" y2="{at:.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{at + 4:.1f}" text-anchor="end">{_num(value)}</text>')
    for level in levels:  # x ticks
        out.append(
            f'<text x="{x(level):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{level}</text>'
        )
    out += [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{H - 14}" text-anchor="middle">'
        "concurrency (streams at once)</text>",
        f'<text transform="translate(18 {TOP + plot_h / 2}) rotate(-90)" '
        'text-anchor="middle">tok/s</text>',
    ]
    for n, s in enumerate(drawn):
        colour = COLOURS[s.name]
        points = " ".join(f"{x(level):.1f},{y(v):.1f}" for level, v in s.points)
        dash = ' stroke-dasharray="6 4"' if s.name == CEILING else ""
        out.append(
            f'<polyline class="series" data-series={quoteattr(s.name)} points="{points}" '
            f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for level, v in s.points:
            out.append(
                f'<circle data-series={quoteattr(s.name)} cx="{x(level):.1f}" '
                f'cy="{y(v):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(s.name)} x{level}: {v:.1f} tok/s</title></circle>"
            )
        legend_y = TOP + 12 + n * 20
        label = "bandwidth ceiling" if s.name == CEILING else s.name
        out += [
            f'<line x1="{W - RIGHT + 16}" y1="{legend_y}" x2="{W - RIGHT + 40}" '
            f'y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/>',
            f'<text x="{W - RIGHT + 46}" y="{legend_y + 4}">{escape(label)}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"
