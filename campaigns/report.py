"""The regulator's report for one campaign, as CSV and as PDF (reportlab).

What it proves: which notice versions were shown (language, content hash), when the
campaign was created, launched and ended, how many people it reached and how many
objected in each country and language, how many withdrew later, and how long an
objection took to take effect. The figures are counted when the report is made, not
taken from the dashboard's snapshot. Labels are in the staff member's language; country
and language names come from CLDR (Babel).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _

from campaigns.charts import count_text, percent_text
from campaigns.dashboard import Counts, Stats, campaign_stats
from campaigns.models import Campaign, NoticeVersion
from core.countries import babel_locale

# DejaVu Sans covers Latin, Greek and Cyrillic (Bulgarian), the scripts of the 26 languages.
FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),  # Debian, Ubuntu: fonts-dejavu-core
    Path("/usr/share/fonts/dejavu"),  # Fedora
    Path("/usr/share/fonts/TTF"),  # Arch
)
FONT_MISSING = gettext_lazy(
    "The PDF report needs the DejaVu Sans font (the Debian package fonts-dejavu-core), which this server "
    "does not have. The CSV report works without it."
)


class FontMissing(Exception):
    pass


@dataclass
class Report:
    campaign: Campaign
    versions: list[NoticeVersion]
    stats: Stats
    made_at: dt.datetime


def report_build(*, campaign_id: int) -> Report:
    campaign = Campaign.objects.select_related("purpose").get(pk=campaign_id)
    versions = list(NoticeVersion.objects.filter(campaign_id=campaign_id).order_by("language"))
    return Report(campaign, versions, campaign_stats(campaign_id=campaign_id), timezone.now())


# --- The content, as rows shared by both formats -------------------------------------


@dataclass(frozen=True)
class Style:
    """How values are written: for people (PDF: the reader's locale) or for programs (CSV)."""

    when: Callable[[dt.datetime | None], str]
    count: Callable[[float | None], str]
    percent: Callable[[float | None], str]


def _local_when(value: dt.datetime | None) -> str:
    return date_format(timezone.localtime(value), "DATETIME_FORMAT") if value else "–"


READABLE = Style(when=_local_when, count=count_text, percent=percent_text)
MACHINE = Style(
    when=lambda value: value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else "",
    count=lambda value: str(round(value)) if value is not None else "",
    percent=lambda value: f"{value:.2f}" if value is not None else "",
)


def _facts(report: Report, style: Style) -> list[list[str]]:
    campaign = report.campaign
    return [
        [_("Campaign"), campaign.name],
        [_("Purpose"), str(campaign.purpose)],
        [_("Status"), campaign.get_status_display()],
        [_("Created"), style.when(campaign.created_at)],
        [_("Launched"), style.when(campaign.launched_at)],
        [_("Ended"), style.when(campaign.ended_at)],
        [_("Report made"), style.when(report.made_at)],
    ]


def _version_rows(report: Report, style: Style, names: dict[str, str]) -> list[list[str]]:
    header = [_("Language"), _("Content hash (SHA-256)"), _("Frozen")]
    rows = [
        [f"{names.get(v.language, v.language)} ({v.language})", v.content_hash, style.when(v.created_at)]
        for v in report.versions
    ]
    return [header, *rows]


def _count_rows(
    groups: dict[str, Counts], total: Counts, names: dict[str, str], first: str, style: Style
) -> list[list[str]]:
    header = [
        first,
        _("Audience"),
        _("Reached"),
        _("Reach (%)"),
        _("Objected"),
        _("Objection rate (%)"),
        _("Withdrew later"),
    ]

    def row(label: str, c: Counts) -> list[str]:
        return [
            label,
            style.count(c.audience),
            style.count(c.reached),
            style.percent(c.reach),
            style.count(c.objected),
            style.percent(c.objection_rate),
            style.count(c.withdrawn),
        ]

    rows = [row(f"{names.get(code, code)} ({code})" if code else _("unknown"), c) for code, c in groups.items()]
    return [header, *rows, row(_("Total"), total)]


def _sections(report: Report, style: Style) -> list[tuple[str, list[list[str]], list[float]]]:
    """(title, rows with the header first, relative column widths for the PDF)."""
    locale = babel_locale(get_language() or "en")
    stats, effect = report.stats, report.stats.effect
    counts = [2.2, 1, 1, 1, 1, 1.1, 1.1]
    return [
        (_("Notice versions"), _version_rows(report, style, locale.languages), [1.0, 3.8, 1.0]),
        (
            _("Reach and objections per country"),
            _count_rows(stats.countries, stats.total, locale.territories, _("Country"), style),
            counts,
        ),
        (
            _("Reach and objections per language"),
            _count_rows(stats.languages, stats.total, locale.languages, _("Language"), style),
            counts,
        ),
        (
            _("Time from objection to effect"),
            [
                [_("Objections"), _("Median (seconds)"), _("Longest (seconds)")],
                [style.count(effect.count), style.count(effect.median), style.count(effect.maximum)],
            ],
            [1, 1, 1],
        ),
    ]


def _explanation() -> str:
    return _(
        "Reached: people with a delivered mail or an in-app impression of the notice. Objected: people who "
        "objected through this campaign’s notice. Withdrew later: of those, people who withdrew their "
        "objection afterwards. Figures count people, not messages."
    )


# --- CSV --------------------------------------------------------------------------------


def report_csv(report: Report) -> str:
    """Sections one after the other, each with its title on a line of its own, then its
    header and rows, and an empty line between sections."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([_("Regulator’s report")])
    writer.writerows(_facts(report, MACHINE))
    for title, rows, _widths in _sections(report, MACHINE):
        writer.writerow([])
        writer.writerow([title])
        writer.writerows(rows)
    writer.writerow([])
    writer.writerow([_explanation()])
    return out.getvalue()


# --- PDF --------------------------------------------------------------------------------


def _register_fonts() -> tuple[str, str]:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if "DejaVuSans" in pdfmetrics.getRegisteredFontNames():
        return "DejaVuSans", "DejaVuSans-Bold"
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.exists() and bold.exists():
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(regular)))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(bold)))
            return "DejaVuSans", "DejaVuSans-Bold"
    raise FontMissing(str(FONT_MISSING))


def report_pdf(report: Report) -> bytes:
    """A4, one table per section; raises FontMissing without DejaVu Sans."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    regular, bold = _register_fonts()
    body = ParagraphStyle("body", fontName=regular, fontSize=9, leading=12)
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5)
    heading = ParagraphStyle(
        "heading", parent=body, fontName=bold, fontSize=12, leading=16, spaceBefore=8, spaceAfter=4
    )
    title = ParagraphStyle("title", parent=heading, fontSize=16, leading=20)

    def table(rows: list[list[str]], widths: list[float] | None = None) -> Table:
        cells = [[Paragraph(escape(cell), small) for cell in row] for row in rows]
        result = Table(cells, colWidths=widths, repeatRows=1, hAlign="LEFT")
        result.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef4")),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ]
            )
        )
        return result

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=_("Regulator’s report"),
        subject=report.campaign.name,
        author="Demur",
        lang=get_language() or "en",
    )
    width = A4[0] - 30 * mm
    story = [Paragraph(escape(_("Regulator’s report")), title)]
    story.append(table(_facts(report, READABLE), [width * 0.3, width * 0.7]))
    for section_title, rows, weights in _sections(report, READABLE):
        story.append(Paragraph(escape(section_title), heading))
        story.append(table(rows, [width * w / sum(weights) for w in weights]))
    story.append(Spacer(1, 6 * mm))
    story.append(Paragraph(escape(_explanation()), body))
    document.build(story)
    return buffer.getvalue()
