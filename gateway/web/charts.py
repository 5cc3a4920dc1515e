"""Bar charts as plain geometry for server-rendered SVG (no script, no style attribute)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BAR_HEIGHT = 22
GAP = 6
LABEL_WIDTH = 190
PLOT_WIDTH = 420


@dataclass(frozen=True)
class Bar:
    """One row of a stacked horizontal bar chart: denials then reviews."""

    label: str
    deny: int
    review: int
    y: int
    deny_width: int
    review_width: int

    @property
    def total(self) -> int:
        """Deny and review decisions together."""
        return self.deny + self.review


@dataclass(frozen=True)
class Chart:
    """A chart's bars and its drawing size."""

    title: str
    bars: list[Bar]
    width: int
    height: int
    label_width: int = LABEL_WIDTH


def bar_chart(title: str, rows: Sequence[tuple[str, int, int]]) -> Chart:
    """Stacked bars scaled to the largest total; `rows` are (label, deny, review)."""
    most = max((deny + review for _, deny, review in rows), default=0) or 1
    bars = [
        Bar(
            label,
            deny,
            review,
            y=i * (BAR_HEIGHT + GAP),
            deny_width=round(PLOT_WIDTH * deny / most),
            review_width=round(PLOT_WIDTH * review / most),
        )
        for i, (label, deny, review) in enumerate(rows)
    ]
    height = max(len(bars), 1) * (BAR_HEIGHT + GAP)
    return Chart(title, bars, LABEL_WIDTH + PLOT_WIDTH + 60, height)
