"""Small SVG charts drawn on the server for the dashboards: horizontal bars and a line
over time. No script and no style attribute (colours come from classes in
campaigns/static/campaigns/dashboard.css), a <title> and a <desc> for screen readers,
and every figure written as text beside its mark. Each chart sits next to a table with
the same numbers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils.formats import date_format, number_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

WIDTH = 640
ROW = 24
LABEL_WIDTH = 170
VALUE_WIDTH = 110


def count_text(value: float | None) -> str:
    """A whole number in the reader's locale, with grouping; a dash when unknown."""
    return number_format(round(value), 0, force_grouping=True) if value is not None else "–"


def percent_text(value: float | None, decimals: int = 1) -> str:
    """A percentage's number (no sign) in the reader's locale; a dash when undefined."""
    # number_format cuts digits off; round first (2/3 is 66.7, not 66.6).
    return number_format(round(value, decimals), decimals) if value is not None else "–"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # the value as shown, e.g. "12,345" or "48.2 %"
    css: str = ""  # an extra class, e.g. "warning"


def bar_chart(*, chart_id: str, title: str, bars: list[Bar], maximum: float | None = None) -> SafeString:
    """One horizontal bar per row, scaled to `maximum` (default: the largest value)."""
    top = maximum if maximum is not None else max((bar.value for bar in bars), default=0)
    # Room for the longest label, at about 7 px a character of the 12 px font.
    label_width = min(max(LABEL_WIDTH, 7 * max((len(bar.label) for bar in bars), default=0) + 12), 300)
    span = WIDTH - label_width - VALUE_WIDTH
    height = ROW * len(bars) + 8
    rows = []
    for n, bar in enumerate(bars):
        y = 4 + n * ROW
        length = span * bar.value / top if top > 0 else 0
        rows.append(
            format_html(
                '<g class="{}"><text class="label" x="{}" y="{}" text-anchor="end">{}</text>'
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}"></rect>'
                '<text class="value" x="{}" y="{}">{}</text></g>',
                f"row {bar.css}".strip(),
                label_width - 8,
                y + ROW * 0.65,
                bar.label,
                label_width,
                y + 3,
                f"{max(length, 0):.1f}",
                ROW - 6,
                label_width + length + 6,
                y + ROW * 0.65,
                bar.text,
            )
        )
    summary = "; ".join(f"{bar.label}: {bar.text}" for bar in bars)
    return _svg(chart_id, title, summary, WIDTH, height, mark_safe("".join(rows)))  # noqa: S308 - built by format_html


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int]
    css: str  # "area" (filled) or "line"


def time_chart(*, chart_id: str, title: str, days: list[dt.date], series: list[Series]) -> SafeString:
    """Values per day as a filled area or a line, with the first, middle and last dates
    and the highest value written on the axes."""
    height, left, bottom, top_pad = 236, 56, 28, 28
    plot_w, plot_h = WIDTH - left - 12, height - bottom - top_pad
    peak = max((max(s.values, default=0) for s in series), default=0)
    step = plot_w / max(len(days) - 1, 1)

    def point(n: int, value: int) -> str:
        y = top_pad + plot_h - (plot_h * value / peak if peak else 0)
        return f"{left + n * step:.1f},{y:.1f}"

    marks = []
    for s in series:
        points = " ".join(point(n, v) for n, v in enumerate(s.values))
        if s.css == "area" and s.values:
            base = top_pad + plot_h
            points = f"{left:.1f},{base:.1f} {points} {left + (len(s.values) - 1) * step:.1f},{base:.1f}"
            marks.append(format_html('<polygon class="series area" points="{}"></polygon>', points))
        else:
            marks.append(format_html('<polyline class="series {}" points="{}"></polyline>', s.css, points))
    ticks = sorted({0, len(days) // 2, len(days) - 1}) if days else []
    axis = [
        format_html(
            '<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>',
            left,
            top_pad + plot_h,
            left + plot_w,
            top_pad + plot_h,
        ),
        format_html(
            '<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>', left, top_pad, left, top_pad + plot_h
        ),
        format_html(
            '<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>', left - 6, top_pad + 10, count_text(peak)
        ),
        format_html('<text class="tick" x="{}" y="{}" text-anchor="end">0</text>', left - 6, top_pad + plot_h),
    ]
    for n in ticks:
        anchor = "start" if n == 0 else "end" if n == len(days) - 1 else "middle"
        axis.append(
            format_html(
                '<text class="tick" x="{}" y="{}" text-anchor="{}">{}</text>',
                f"{left + n * step:.1f}",
                height - 8,
                anchor,
                date_format(days[n], "SHORT_DATE_FORMAT"),
            )
        )
    legend = format_html_join(
        "",
        '<g class="legend"><rect class="key {}" x="{}" y="0" width="10" height="10"></rect><text x="{}" y="9">{}</text></g>',
        ((s.css, left + 8 + i * 180, left + 22 + i * 180, s.name) for i, s in enumerate(series)),
    )
    summary = "; ".join(
        _("{series}: {total} in all, at most {peak} on {day}").format(
            series=s.name,
            total=count_text(sum(s.values)),
            peak=count_text(max(s.values)),
            day=date_format(days[s.values.index(max(s.values))], "SHORT_DATE_FORMAT"),
        )
        for s in series
        if s.values
    )
    body = mark_safe("".join(axis) + "".join(marks) + legend)  # noqa: S308 - built by format_html
    return _svg(chart_id, title, summary, WIDTH, height, body)


def _svg(chart_id: str, title: str, summary: str, width: int, height: int, body: SafeString) -> SafeString:
    return format_html(
        '<svg class="chart" id="{id}" role="img" aria-labelledby="{id}-title {id}-desc" viewBox="0 0 {w} {h}" '
        'xmlns="http://www.w3.org/2000/svg"><title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>'
        "{body}</svg>",
        id=chart_id,
        w=width,
        h=height,
        title=title,
        desc=summary,
        body=body,
    )
