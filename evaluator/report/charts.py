"""Charts as inline SVG: speedup against balancedness, the best score as candidates were made, and bars of a plan's
loads. Every text and attribute is escaped, so a candidate's name in a tooltip is only text; points link to pages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 14, 46  # room for the axes' ticks and names
TICKS = 6  # about how many ticks an axis gets


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str  # its tooltip
    href: str | None = None
    kind: str = "point"  # its classes, which the style sheet draws


@dataclass(frozen=True)
class Axis:
    low: float
    high: float
    start: float  # where `low` is drawn, in the chart's units
    end: float
    log: bool = False

    def at(self, value: float) -> float:
        scale = math.log10 if self.log else float
        low, high = scale(self.low), scale(self.high)
        return self.start + (scale(value) - low) / (high - low) * (self.end - self.start)

    def ticks(self) -> list[tuple[float, str]]:
        """Round values inside the axis, with their labels."""
        if self.log:
            return _log_ticks(self.low, self.high)
        step = _nice_step((self.high - self.low) / TICKS)
        values = (index * step for index in range(math.ceil(self.low / step), math.floor(self.high / step) + 1))
        return [(value, _tick_label(value, step)) for value in values]


def element(tag: str, content: str = "", **attributes: object) -> Markup:
    """One element; its attributes' values and its text escaped (content that is already Markup is kept). Attribute
    names are Python names: `class_` is class, `aria_label` is aria-label."""
    attrs = "".join(f' {name.rstrip("_").replace("_", "-")}="{escape(value)}"'
                    for name, value in attributes.items() if value is not None)
    return Markup(f"<{tag}{attrs}>{escape(content)}</{tag}>")


def scatter(points: Sequence[Point], seed: Point | None, front: Sequence[Point], x_name: str, y_name: str,
            label: str) -> Markup:
    """Points on a linear x axis and a logarithmic y axis, the front as a line through its points (by x), the seed
    as a diamond."""
    every = [*points, *([seed] if seed else [])]
    x = Axis(*_span([point.x for point in every]), LEFT, WIDTH - RIGHT)
    y = Axis(*_span([point.y for point in every], log=True), HEIGHT - BOTTOM, TOP, log=True)
    parts = [_axes(x, y, x_name, y_name)]
    if front:
        ordered = sorted(front, key=lambda point: point.x)
        parts.append(element("polyline", class_="front-line", points=_path(ordered, x, y)))
    parts += [_dot(point, x, y) for point in points]
    if seed:
        cx, cy = x.at(seed.x), y.at(seed.y)
        diamond = f"{cx:.1f},{cy - 7:.1f} {cx + 7:.1f},{cy:.1f} {cx:.1f},{cy + 7:.1f} {cx - 7:.1f},{cy:.1f}"
        parts.append(element("polygon", element("title", seed.title), class_=seed.kind, points=diamond))
    return _svg(parts, label)


def progress(points: Sequence[Point], x_name: str, y_name: str, label: str) -> Markup:
    """Points by their x (the order they came in), and a step line through the best y so far."""
    x = Axis(*_span([point.x for point in points]), LEFT, WIDTH - RIGHT)
    y = Axis(*_span([point.y for point in points], from_zero=True), HEIGHT - BOTTOM, TOP)
    steps, best = [], -math.inf
    for point in sorted(points, key=lambda point: point.x):
        if steps and point.y > best:
            steps.append(Point(point.x, best, ""))
        best = max(best, point.y)
        steps.append(Point(point.x, best, ""))
    parts = [_axes(x, y, x_name, y_name), element("polyline", class_="best-line", points=_path(steps, x, y))]
    parts += [_dot(point, x, y) for point in points]
    return _svg(parts, label)


def bars(values: Sequence[float], titles: Sequence[str], line: Sequence[float], x_name: str, y_name: str,
         label: str) -> Markup:
    """One bar per value from 0, each with its title, and a step line of `line` (one value per bar) across them."""
    count = len(values)
    x = Axis(0.0, float(count), LEFT, WIDTH - RIGHT)
    y = Axis(*_span([*values, *line], from_zero=True), HEIGHT - BOTTOM, TOP)
    width = (x.end - x.start) / count
    parts = [_axes(x, y, x_name, y_name, integer_x=True)]
    for index, (value, title) in enumerate(zip(values, titles)):
        top = y.at(value)
        parts.append(element("rect", element("title", title), class_="bar", x=f"{x.at(index) + width * 0.1:.1f}",
                             y=f"{top:.1f}", width=f"{width * 0.8:.1f}", height=f"{max(0.0, y.start - top):.1f}"))
    steps = [Point(index + offset, level, "") for index, level in enumerate(line) for offset in (0, 1)]
    parts.append(element("polyline", class_="mean-line", points=_path(steps, x, y)))
    return _svg(parts, label)


def _svg(parts: Sequence[Markup], label: str) -> Markup:
    return element("svg", Markup("").join(parts), xmlns="http://www.w3.org/2000/svg",
                   viewBox=f"0 0 {WIDTH} {HEIGHT}", class_="chart", aria_label=label)


def _dot(point: Point, x: Axis, y: Axis) -> Markup:
    circle = element("circle", element("title", point.title), class_=point.kind, cx=f"{x.at(point.x):.1f}",
                     cy=f"{y.at(point.y):.1f}", r="4")
    return element("a", circle, href=point.href) if point.href else circle


def _path(points: Sequence[Point], x: Axis, y: Axis) -> str:
    return " ".join(f"{x.at(point.x):.1f},{y.at(point.y):.1f}" for point in points)


def _axes(x: Axis, y: Axis, x_name: str, y_name: str, integer_x: bool = False) -> Markup:
    """The frame, the ticks with their grid lines and labels, and the axes' names."""
    parts = [element("rect", class_="frame", x=f"{x.start:.1f}", y=f"{y.end:.1f}", width=f"{x.end - x.start:.1f}",
                     height=f"{y.start - y.end:.1f}")]
    every = math.ceil(x.high / (TICKS * 3))  # bars' labels thinned out to fit
    x_ticks = [(index + 0.5, str(index)) for index in range(0, int(x.high), every)] if integer_x else x.ticks()
    for value, text in x_ticks:
        at = x.at(value)
        parts.append(element("text", text, class_="tick x", x=f"{at:.1f}", y=f"{y.start + 16:.1f}"))
    for value, text in y.ticks():
        at = y.at(value)
        parts.append(element("line", class_="grid", x1=f"{x.start:.1f}", x2=f"{x.end:.1f}", y1=f"{at:.1f}",
                             y2=f"{at:.1f}"))
        parts.append(element("text", text, class_="tick y", x=f"{x.start - 6:.1f}", y=f"{at + 4:.1f}"))
    parts.append(element("text", x_name, class_="axis-name x", x=f"{(x.start + x.end) / 2:.1f}",
                         y=f"{HEIGHT - 6:.1f}"))
    middle = (y.start + y.end) / 2
    parts.append(element("text", y_name, class_="axis-name y", x="14", y=f"{middle:.1f}",
                         transform=f"rotate(-90 14 {middle:.1f})"))
    return Markup("").join(parts)


def _span(values: Sequence[float], log: bool = False, from_zero: bool = False) -> tuple[float, float]:
    """A range holding every value with a margin (`from_zero`: from 0 exactly); on a log axis, of positive values."""
    kept = [value for value in values if math.isfinite(value) and (value > 0 or not log)] or [1.0]
    low, high = (0.0 if from_zero else min(kept)), max(kept)
    if log:
        low, high = math.log10(low), math.log10(high)
    margin = (high - low) * 0.06 or 0.5
    low, high = (low if from_zero else low - margin), high + margin
    return (10 ** low, 10 ** high) if log else (low, high)


def _tick_label(value: float, step: float) -> str:
    """`value` to the precision of `step`; thousands and millions as k and M."""
    if value == 0:
        return "0"
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if step >= unit:
            return f"{value / unit:.{max(0, -math.floor(math.log10(step / unit)))}f}{suffix}"
    return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2 and 5 times a power of ten at least `raw`."""
    power = 10 ** math.floor(math.log10(raw))
    return next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)


def _log_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """Powers of ten inside the range; 1, 2 and 5 times them where fewer than three powers fit."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    factors = (1,) if last - first > 3 else (1, 2, 5)
    values = [factor * 10.0 ** power for power in range(first, last + 1) for factor in factors]
    return [(value, f"{value:g}x") for value in values if low <= value <= high]
