"""The dashboard's small widgets: a meter, a memory bar by term, and the curves.

Every figure they draw comes from the run's events or the plan, never from the clock,
so a finished run looks the same each time it is opened.
"""

from __future__ import annotations

import datetime as dt
import math

from rich.console import Group
from rich.text import Text
from textual.widgets import Static
from textual_plotext import PlotextPlot

from localtrain.console import size

BAR_FULL = "█"
BAR_EMPTY = "░"
TERM_COLOURS = ["cyan", "white", "green", "yellow", "magenta", "red", "blue", "bright_black"]


def bar(fraction: float | None, width: int, colour: str = "green") -> Text:
    """A text bar `width` cells wide, filled to `fraction` (None: unknown, drawn empty)."""
    width = max(width, 4)
    if fraction is None or not math.isfinite(fraction):
        return Text(BAR_EMPTY * width, style="dim")
    filled = int(round(min(max(fraction, 0.0), 1.0) * width))
    return Text.assemble((BAR_FULL * filled, colour), (BAR_EMPTY * (width - filled), "dim"))


class Meter(Static):
    """A labelled bar with its percentage and its detail below, wrapped to the width."""

    DEFAULT_CSS = "Meter { height: auto; }"

    def __init__(self, label: str, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.fraction: float | None = None
        self.detail = "waiting"
        self.colour = "green"

    def set(self, fraction: float | None, detail: str, colour: str = "green") -> None:
        self.fraction, self.detail, self.colour = fraction, detail, colour
        self.refresh()

    def render(self) -> Group:
        width = max(self.size.width - len(self.label) - 8, 4)
        pct = "    " if self.fraction is None else f"{min(self.fraction, 9.99):4.0%}"
        head = Text.assemble((f"{self.label} ", "bold"), bar(self.fraction, width, self.colour), f" {pct}")
        return Group(head, Text(self.detail, style="dim"))


class MemoryBar(Static):
    """Predicted (or measured) memory against the budget, split into its named terms."""

    DEFAULT_CSS = "MemoryBar { height: auto; }"

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.terms: dict[str, int] = {}
        self.budget = 0
        self.used: int | None = None
        self.title = "memory"

    def set(self, terms: dict[str, int], budget: int, used: int | None = None, title: str = "memory") -> None:
        self.terms, self.budget, self.used, self.title = dict(terms), int(budget), used, title
        self.refresh(layout=True)

    def render(self) -> Group:
        width = max(self.size.width - 2, 10)
        if not self.budget:
            return Group(Text(f"{self.title}: no plan yet", style="dim"))
        total = sum(self.terms.values())
        scale = width / max(self.budget, total, self.used or 0)
        line, legend = Text(), Text()
        for i, (name, value) in enumerate(self.terms.items()):
            colour = TERM_COLOURS[i % len(TERM_COLOURS)]
            line.append(BAR_FULL * int(round(value * scale)), style=colour)
            if value:  # a term of no bytes has no place in the legend
                legend.append("■ ", style=colour)
                legend.append(f"{name} {size(value)}  ")
        budget_cell = int(round(self.budget * scale))
        line.append(BAR_EMPTY * max(budget_cell - len(line), 0), style="dim")
        marker = Text(" " * max(budget_cell - 8, 0) + "budget ▲", style="bold")
        over = total > self.budget
        head = Text.assemble(
            (f"{self.title}: ", "bold"),
            (f"predicted peak {size(total)}", "red" if over else "green"),
            f" of {size(self.budget)} budget ({total / self.budget:.0%})",
        )
        if self.used is not None:
            head.append(f" | in use {size(self.used)} ({self.used / self.budget:.0%})")
        return Group(head, line, marker, legend)


class Curves(PlotextPlot):
    """Lines over steps: train and validation loss, or validation perplexity."""

    DEFAULT_CSS = "Curves { height: 1fr; min-height: 8; }"

    def __init__(self, title: str, ylabel: str, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.ylabel = ylabel
        self.series: dict[str, list[tuple[int, float]]] = {}

    def set(self, series: dict[str, list[tuple[int, float]]]) -> None:
        if series != self.series:
            self.series = series
            self.replot()

    def on_mount(self) -> None:
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title if any(self.series.values()) else f"{self.title}: no points yet")
        plt.xlabel("step")
        plt.ylabel(self.ylabel)
        for (label, points), marker in zip(self.series.items(), ("braille", "dot", "hd")):
            if points:
                xs, ys = zip(*points)
                plt.plot(list(xs), list(ys), label=label, marker=marker if len(points) > 1 else "dot")
        self.refresh()


def stamp(t: float | None) -> str:
    """A wall-clock time as the dashboard shows it (minutes), or "-"."""
    return "-" if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
