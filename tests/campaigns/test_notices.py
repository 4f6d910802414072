"""The notice: frozen per language, filled in per person, and provable later."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core import mail
from django.test import override_settings

from campaigns.models import NoticeVersion
from campaigns.notices import (
    NoticeNotReady,
    content_hash,
    notice_claims,
    notice_email,
    notice_object_url,
    notice_personalise,
    notice_unsubscribe_url,
    template_hash,
)
from campaigns.services import notice_versions_freeze
from optout.links import (
    OBJECT_SALT,
    UNSUBSCRIBE_SALT,
    objection_url,
    read_token,
    unsubscribe_url,
)
from tests.campaigns.factories import make_campaign

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = [code for code, _name in settings.LANGUAGES]
# What a phone mail app shows of a subject line without cutting it (portrait, ~360 px).
PHONE_SUBJECT_LIMIT = 60


def _person(version: NoticeVersion, **overrides):
    values = {
        "name": "Alex",
        "object_url": "https://demur.example/de/optout/t/TOKEN/?a=1&b=2",
        "unsubscribe_url": "https://demur.example/de/optout/unsubscribe/TOKEN/",
    }
    values.update(overrides)
    return notice_personalise(version, **values)


@pytest.fixture
def campaign(purpose):
    return make_campaign(purpose)


def test_it_freezes_one_version_per_language_with_its_hashes(campaign):
    versions = notice_versions_freeze(campaign_id=campaign.pk)

    assert sorted(v.language for v in versions) == sorted(LANGUAGES)
    de = next(v for v in versions if v.language == "de")
    assert de.content_hash == content_hash(de)
    assert de.template_name == "ai-training"
    assert de.template_hash == template_hash("ai-training")
    po = ROOT / "locale" / "de" / "LC_MESSAGES" / "django.po"
    assert de.catalog_hash == hashlib.sha256(po.read_bytes()).hexdigest()
    assert len({v.content_hash for v in versions}) == len(LANGUAGES)


def test_it_freezes_only_once(campaign):
    first = {v.language: (v.pk, v.content_hash) for v in notice_versions_freeze(campaign_id=campaign.pk)}
    again = {v.language: (v.pk, v.content_hash) for v in notice_versions_freeze(campaign_id=campaign.pk)}

    assert again == first
    assert NoticeVersion.objects.filter(campaign=campaign).count() == len(LANGUAGES)


def test_it_refuses_to_freeze_a_campaign_that_lacks_a_value(purpose):
    campaign = make_campaign(purpose, dpo_email="")

    with pytest.raises(NoticeNotReady, match="dpo_email"):
        notice_versions_freeze(campaign_id=campaign.pk)
    assert not NoticeVersion.objects.filter(campaign=campaign).exists()


def test_it_writes_the_notice_in_the_persons_language_with_the_campaigns_values(
    campaign,
):
    versions = {v.language: v for v in notice_versions_freeze(campaign_id=campaign.pk)}

    de = _person(versions["de"])
    assert de.subject == "Ihre Informationen und KI bei Demur Social"
    assert '<html lang="de" dir="ltr">' in de.html
    assert "Ab dem 27. Januar 2027 wird Example Social Ltd öffentliche Informationen aus Demur Social" in de.text
    assert "Hallo Alex," in de.text
    el = _person(versions["el"])
    assert "Οι πληροφορίες σας και η ΤΝ στο Demur Social" == el.subject
    assert "27 Ιανουαρίου 2027" in el.text
    assert '<html lang="el" dir="ltr">' in el.html


def test_it_covers_every_section_the_notice_owes(campaign):
    en = _person(notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("en")])

    for words in [
        "posts, photos and their captions, and comments",  # what is used
        "interactions with AI features",
        "We will not use your private messages",
        "languages, dialects, humour and culture",  # what for
        "WHAT THIS MEANS FOR YOU",
        "legitimate interests",  # legal basis
        "right to object at any time",  # Art. 21
        "after training has started",
        "those made in the past and those made in the future",
        "Example Social Ltd is responsible",  # controller
        "Data protection officer: dpo@example.com",
        "Privacy policy: https://example.com/privacy?from=notice&v=2",
    ]:
        assert words in en.text, words
    # The right to object is a section of its own, set apart by a box (Art. 21(4)).
    box = re.search(r'<td class="right"[^>]*>(.*?)</td>', en.html, re.DOTALL).group(1)
    assert "Your right to object" in box and "legitimate interests" in box
    assert box.count('href="https://demur.example/de/optout/t/TOKEN/?a=1&amp;b=2"') == 2  # button + link


def test_it_escapes_what_varies_per_person_in_html_and_leaves_text_plain(campaign):
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("en")]

    notice = _person(version, name='Bob <script>alert("x")</script> & Co {0}')

    assert "<script>" not in notice.html
    assert "Hello Bob &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co {0}," in notice.html
    assert 'Hello Bob <script>alert("x")</script> & Co {0},' in notice.text
    assert "__demur_" not in notice.html + notice.text + notice.inapp


def test_it_inserts_campaign_values_safely(purpose):
    campaign = make_campaign(purpose, controller_name='Q&A <"Social"> Ltd', product_name="Chat{x}%(y)s")
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("en")]

    notice = _person(version)

    assert 'Q&amp;A &lt;"Social"&gt; Ltd is responsible' in notice.html
    assert 'Q&A <"Social"> Ltd is responsible' in notice.text
    assert notice.subject == "Your information and AI at Chat{x}%(y)s"


def test_it_greets_a_person_without_a_name_without_a_gap(campaign):
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("de")]

    assert _person(version, name="").text.startswith("Hallo,\n")


def test_it_tells_someone_who_already_objected_that_they_need_not_do_anything(campaign):
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("en")]

    notice = _person(version, objected_on=dt.date(2025, 5, 14))

    assert notice.subject == "Your objection to AI training still applies"
    assert "You have already objected, on May 14, 2025" in notice.text
    assert "You need not do anything" in notice.inapp
    assert "optout/t/" not in notice.html  # no button to object again
    de = _person(
        notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("de")],
        objected_on=dt.date(2025, 5, 14),
    )
    assert "Sie haben bereits am 14. Mai 2025 widersprochen" in de.inapp


def test_it_keeps_every_subject_short_enough_for_a_phone(campaign):
    for version in notice_versions_freeze(campaign_id=campaign.pk):
        for subject in (version.subject, version.objected_subject):
            assert 10 < len(subject) <= PHONE_SUBJECT_LIMIT, (
                version.language,
                subject,
                len(subject),
            )


def test_it_sends_a_mail_with_the_signed_links_and_the_one_click_unsubscribe_header(
    campaign,
):
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("de")]

    notice_email(version, to="anna@example.com", name="Anna", subject_id="user-42").send()

    (message,) = mail.outbox
    html = message.alternatives[0][0]
    assert message.subject == "Ihre Informationen und KI bei Demur Social"
    object_link = re.search(r'href="([^"]*/optout/t/[^"]+)"', html).group(1)
    claims = read_token(urlsplit(object_link).path.rstrip("/").rsplit("/", 1)[1], salt=OBJECT_SALT)
    assert (claims.subject_id, claims.purpose, claims.language) == (
        "user-42",
        "ai-training",
        "de",
    )
    assert (claims.campaign_id, claims.notice_version_id) == (campaign.pk, version.pk)
    assert urlsplit(object_link).path.startswith("/de/optout/t/")
    assert object_link in message.body
    unsubscribe = message.extra_headers["List-Unsubscribe"].strip("<>")
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = urlsplit(unsubscribe).path.rstrip("/").rsplit("/", 1)[1]
    assert read_token(token, salt=UNSUBSCRIBE_SALT).subject_id == "user-42"
    # Mail clients: inline CSS, table layout, no remote images, lang and dir, a preheader.
    assert "<style" not in html and 'style="' in html and "<table" in html
    assert "<img" not in html and "url(" not in html
    assert '<html lang="de" dir="ltr">' in html
    assert re.search(r'<span class="preheader"[^>]*>Was sich am 27. Januar 2027 ändert', html)


def test_it_renders_a_frozen_version_byte_for_byte_after_the_template_changes(purpose, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates" / "notices", templates / "notices")
    engines = [
        dict(engine, DIRS=[templates]) if "jinja2" in engine["BACKEND"].lower() else engine
        for engine in settings.TEMPLATES
    ]
    with override_settings(TEMPLATES=engines):
        campaign = make_campaign(purpose)
        version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("en")]
        before = _person(version, objected_on=None)

    body = templates / "notices" / "ai-training" / "body.html"
    body.write_text(body.read_text().replace("<h2>", "<h2>CHANGED "))
    # A new settings block builds new template engines: the deploy of a changed template.
    with override_settings(TEMPLATES=engines):
        stored = NoticeVersion.objects.get(pk=version.pk)
        after = _person(stored)
        fresh = notice_versions_freeze(campaign_id=make_campaign(purpose).pk)[LANGUAGES.index("en")]

    assert after == before
    assert (after.html.encode(), after.text.encode()) == (
        before.html.encode(),
        before.text.encode(),
    )
    assert "CHANGED" in fresh.body_html and "CHANGED" not in stored.body_html
    assert fresh.template_hash != stored.template_hash
    assert stored.content_hash == content_hash(stored)


@pytest.mark.parametrize(
    ("fast", "slow", "salt"),
    [
        (notice_object_url, objection_url, OBJECT_SALT),
        (notice_unsubscribe_url, unsubscribe_url, UNSUBSCRIBE_SALT),
    ],
)
def test_it_builds_the_same_links_as_the_opt_out_helpers(campaign, fast, slow, salt):
    version = notice_versions_freeze(campaign_id=campaign.pk)[LANGUAGES.index("el")]
    claims = notice_claims(version, subject_id="user-7", email="eleni@example.com")

    ours, theirs = fast(claims), slow(claims)

    assert ours.rsplit("/", 2)[0] == theirs.rsplit("/", 2)[0]
    assert urlsplit(ours).path.startswith("/el/optout/")
    token = urlsplit(ours).path.rstrip("/").rsplit("/", 1)[1]
    assert read_token(token, salt=salt) == claims


def test_it_writes_every_section_in_every_language_without_falling_back_to_english(
    campaign,
):
    english = [
        "What we will use",
        "Your right to object",
        "legitimate interests",
        "Who is responsible",
    ]
    for version in notice_versions_freeze(campaign_id=campaign.pk):
        notice = _person(version)
        assert f'<html lang="{version.language}" dir="ltr">' in notice.html
        assert notice.html.count('class="button"') == 1, version.language
        box = re.search(r'<td class="right"[^>]*>(.*?)</td>', notice.html, re.DOTALL).group(1)
        assert 'href="https://demur.example/de/optout/t/TOKEN/?a=1&amp;b=2"' in box, version.language
        assert "Demur Social" in notice.subject and "Example Social Ltd" in notice.text
        assert "dpo@example.com" in notice.text and "https://example.com/privacy" in notice.text
        if version.language != "en":
            assert not [words for words in english if words in notice.html + notice.text], version.language
