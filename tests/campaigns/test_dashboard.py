"""The staff dashboards: the figures of a hand-built campaign (tests/campaigns/dashboard_data.py),
the warnings past the bounce and complaint thresholds, the snapshot and its freshness,
the charts, and who may read them."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from campaigns import charts
from campaigns.dashboard import Stats, campaign_stats, stats_cache_key
from campaigns.models import Delivery
from tests.campaigns.dashboard_data import T0, build_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def campaign(purpose):
    return build_campaign(purpose)


def _client(username: str, *, group: str | None = None, staff: bool = True) -> Client:
    user = User.objects.create_user(username, f"{username}@example.org", "pw", is_staff=staff)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return _client("val", group="Privacy viewer")


@pytest.fixture
def read(django_capture_on_commit_callbacks):
    """The dashboard's HTML once counted: the first view asks for the count (run at once:
    without a broker Celery tasks are eager), the second shows it."""

    def get(client: Client, url: str) -> str:
        with django_capture_on_commit_callbacks(execute=True):
            client.get(url)
        response = client.get(url)
        assert response.status_code == 200
        return _dashboard_part(response.content.decode())

    return get


def _dashboard_part(html: str) -> str:
    """The page's own content, without the admin's frame."""
    return html[html.index('<div class="demur-dashboard">') : html.index("<!-- END Content -->")]


def _row(html: str, label: str) -> list[str]:
    """The cells of the first table row whose header cell starts with `label`."""
    match = re.search(r"<tr[^>]*>\s*<th scope=\"row\">" + re.escape(label) + r"(.*?)</tr>", html, re.S)
    assert match, f"no row {label!r}"
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)]


def test_it_counts_people_through_the_funnel_per_country_and_language(campaign):
    stats = campaign_stats(campaign_id=campaign.pk)

    total = stats.total
    assert (total.audience, total.reached, total.opened, total.clicked, total.objected, total.withdrawn) == (
        7,
        4,
        2,
        1,
        2,
        1,
    )
    de, gr = stats.countries["DE"], stats.countries["GR"]
    assert (de.audience, de.reached, de.objected, de.withdrawn) == (4, 2, 1, 0)
    assert (gr.audience, gr.reached, gr.objected, gr.withdrawn) == (3, 2, 1, 1)
    assert de.reach == 50.0
    assert round(gr.reach, 1) == 66.7
    assert stats.languages["el"].audience == 3 and stats.languages["el"].objected == 1
    mail = stats.mail
    assert (mail.sent, mail.delivered, mail.bounced, mail.complained, mail.failed) == (5, 3, 1, 1, 1)
    assert mail.bounce_rate == 20.0
    assert round(mail.complaint_rate, 1) == 33.3


def test_it_counts_objections_per_day_and_the_time_to_effect(campaign):
    stats = campaign_stats(campaign_id=campaign.pk)

    assert [(d.day, d.objected, d.withdrawn) for d in stats.days] == [
        (dt.date(2026, 3, 2), 1, 0),
        (dt.date(2026, 3, 3), 1, 0),
        (dt.date(2026, 3, 4), 0, 0),
        (dt.date(2026, 3, 5), 0, 1),
    ]
    assert (stats.effect.count, stats.effect.median, stats.effect.maximum) == (2, 60.0, 90.0)


def test_a_viewer_reads_the_campaign_dashboard_with_charts_and_tables(campaign, viewer, read):
    html = read(viewer, reverse("admin:demur-campaign-dashboard", args=[campaign.pk]))

    assert _row(html, "Audience") == ["7", "100.0"]
    assert _row(html, "Delivered or shown") == ["4", "57.1"]
    assert _row(html, "Objected") == ["2", "28.6"]
    assert _row(html, "Germany") == ["4", "2", "50.0", "1", "25.0", "0"]
    assert _row(html, "Greece") == ["3", "2", "66.7", "1", "33.3", "1"]
    assert _row(html, "Bounce rate (%)") == ["20.00"]
    # Charts are inline SVG with a title, a description and the figures as text.
    assert html.count("<svg") == 5  # funnel, reach, objections per country and language, over time
    assert '<title id="chart-reach-title">Reach per country (share of the audience, %)</title>' in html
    assert re.search(r'<text class="value"[^>]*>66.7 %</text>', html)
    # Nothing a strict CSP would block: no inline script, no style attribute.
    assert "<script" not in html and "style=" not in html
    assert "Figures as of" in html


def test_it_warns_only_past_the_thresholds(campaign, viewer, read, settings):
    url = reverse("admin:demur-campaign-dashboard", args=[campaign.pk])
    settings.DEMUR_COMPLAINT_RATE_WARNING = 34  # the campaign is at 33.3 %
    settings.DEMUR_BOUNCE_RATE_WARNING = 21  # at 20 %
    html = read(viewer, url)
    assert "Spam complaints are at" not in html and "Bounces are at" not in html

    settings.DEMUR_COMPLAINT_RATE_WARNING = 33
    settings.DEMUR_BOUNCE_RATE_WARNING = 20
    html = viewer.get(url).content.decode()
    assert "Spam complaints are at 33.33 % of delivered mails, past the warning level of 33.00 %" in html
    assert "Bounces are at 20.00 % of sent mails, past the warning level of 20.00 %" in html


def test_the_overall_dashboard_lists_campaigns_and_adds_them_up(campaign, purpose, viewer, read):
    other = build_other_campaign(purpose)
    html = read(viewer, reverse("admin:demur-dashboard"))

    assert reverse("admin:demur-campaign-dashboard", args=[campaign.pk]) in html
    assert reverse("admin:demur-campaign-dashboard", args=[other.pk]) in html
    assert _row(html, "Audience") == ["8", "100.0"]  # 7 + 1: a person per campaign
    assert _row(html, "Germany") == ["5", "3", "60.0", "1", "20.0", "0"]


def build_other_campaign(purpose):
    from campaigns.models import NoticeVersion
    from tests.campaigns.factories import make_campaign

    other = make_campaign(purpose, name="Second wave")
    version = NoticeVersion.objects.create(
        campaign=other, language="de", content_hash="f" * 64, subject="s", body_html="h", body_text="t"
    )
    Delivery.objects.create(
        campaign=other, subject_id="a", channel="mail", notice_version=version, status="sent", delivered_at=T0
    )
    return other


def test_the_first_view_asks_for_one_count_and_the_page_never_counts(
    campaign, viewer, django_capture_on_commit_callbacks
):
    url = reverse("admin:demur-campaign-dashboard", args=[campaign.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        first = _dashboard_part(viewer.get(url).content.decode())
        second = _dashboard_part(viewer.get(url).content.decode())

    assert "The figures are being counted for the first time" in first and "Figures as of" not in first
    assert "The figures are being counted for the first time" in second
    assert len(callbacks) == 1  # one count asked for, not one per view
    callbacks[0]()  # the task (eager without a broker)
    assert _row(_dashboard_part(viewer.get(url).content.decode()), "Audience") == ["7", "100.0"]


def test_a_broker_that_is_down_leaves_the_page_up_and_the_next_view_asks_again(
    campaign, viewer, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from campaigns.tasks import dashboard_refresh_task

    asked = []

    def broker_down(args=(), kwargs=None, **options):
        asked.append(tuple(args))
        raise OperationalError("connection refused")

    monkeypatch.setattr(dashboard_refresh_task, "apply_async", broker_down)
    url = reverse("admin:demur-campaign-dashboard", args=[campaign.pk])

    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            response = viewer.get(url)
        assert response.status_code == 200
        assert "The figures are being counted for the first time" in response.content.decode()

    assert asked == [(campaign.pk,), (campaign.pk,)]  # the mark was dropped: asked again


def test_it_shows_the_snapshot_until_it_is_stale_then_counts_again(
    campaign, viewer, read, settings, django_capture_on_commit_callbacks
):
    url = reverse("admin:demur-campaign-dashboard", args=[campaign.pk])
    assert _row(read(viewer, url), "Clicked") == ["1", "14.3"]
    Delivery.objects.filter(subject_id="b").update(clicked_at=T0)

    # Fresh snapshot: shown as it was, nothing enqueued.
    with django_capture_on_commit_callbacks() as callbacks:
        html = _dashboard_part(viewer.get(url).content.decode())
    assert _row(html, "Clicked") == ["1", "14.3"]
    assert callbacks == []

    # Past the maximum age: still shown (with its time), and a recount goes to Celery.
    snapshot: Stats = cache.get(stats_cache_key(campaign.pk))
    snapshot.as_of -= dt.timedelta(seconds=settings.DEMUR_DASHBOARD_MAX_AGE + 1)
    cache.set(stats_cache_key(campaign.pk), snapshot)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        html = _dashboard_part(viewer.get(url).content.decode())
    assert _row(html, "Clicked") == ["1", "14.3"]
    assert "A new count is under way" in html
    assert len(callbacks) == 1

    html = _dashboard_part(viewer.get(url).content.decode())
    assert _row(html, "Clicked") == ["2", "28.6"]
    assert "A new count is under way" not in html


def test_only_readers_see_the_dashboards(campaign, viewer):
    urls = [reverse("admin:demur-dashboard"), reverse("admin:demur-campaign-dashboard", args=[campaign.pk])]
    staff = _client("sam", group="Privacy staff")
    nobody = _client("nora")  # staff, in no role
    outsider = _client("olga", staff=False)
    for url in urls:
        assert viewer.get(url).status_code == 200
        assert staff.get(url).status_code == 200
        assert nobody.get(url).status_code == 403
        assert outsider.get(url).status_code == 302  # to the admin login
        assert Client().get(url).status_code == 302
    assert viewer.get(reverse("admin:demur-campaign-dashboard", args=[campaign.pk + 1000])).status_code == 404


def test_the_admin_index_links_to_the_dashboard_for_readers(viewer):
    link = reverse("admin:demur-dashboard")
    assert link in viewer.get(reverse("admin:index")).content.decode()
    assert link not in _client("nora").get(reverse("admin:index")).content.decode()


def test_charts_escape_labels_and_scale_to_the_maximum():
    svg = charts.bar_chart(
        chart_id="c",
        title="Reach <all>",
        bars=[charts.Bar("<b>DE</b>", 50, "50 %"), charts.Bar("GR", 100, "100 %")],
        maximum=200,
    )
    assert "<b>DE</b>" not in svg and "&lt;b&gt;DE&lt;/b&gt;" in svg
    assert '<title id="c-title">Reach &lt;all&gt;</title>' in svg
    widths = [float(w) for w in re.findall(r'<rect class="bar" [^>]*width="([\d.]+)"', svg)]
    assert widths[1] == pytest.approx(2 * widths[0]) and widths[1] == pytest.approx((charts.WIDTH - 280) / 2)

    days = [dt.date(2026, 3, 1) + dt.timedelta(days=n) for n in range(3)]
    line = charts.time_chart(
        chart_id="t", title="Per day", days=days, series=[charts.Series("Objections", [1, 4, 2], "area")]
    )
    assert "<polygon" in line and "Objections: 4 in all" not in line
    assert "Objections: 7 in all, at most 4 on" in line


def test_a_campaign_not_launched_yet_shows_zeros_and_no_chart_of_days(purpose, viewer, read):
    from tests.campaigns.factories import make_campaign

    draft = make_campaign(purpose, name="Draft")
    html = read(viewer, reverse("admin:demur-campaign-dashboard", args=[draft.pk]))

    assert _row(html, "Audience") == ["0", "–"]
    assert "No objection yet." in html and 'id="chart-time"' not in html
    assert "Spam complaints are at" not in html
