"""Benchmark: filling in a frozen notice version for one recipient, beside a bare Jinja2
render of the same templates in the same run.

    taskset -c 0 .venv/bin/python bench/notice_render.py --language de --messages 20000 --repeats 7

One process pinned to one core (the loops are single-threaded). Per message:

- frozen + 1 link: a new signed objection link (campaigns.notices.notice_object_url,
  the same URL as optout.links.objection_url) and the person's name, filled into the
  frozen subject, HTML, text and in-app texts;
- frozen + 2 links: the same with the unsubscribe link too, as a real mail carries;
- frozen, links given: the fill-in alone (links made elsewhere);
- bare Jinja2: rendering body.html, body.txt, inapp.html and subject.txt from the
  templates with the same values (no CSS inlining, no signing): the baseline.

Each figure is the median of the repeats. Target (issue 5): at least 20,000 messages/s
for "frozen + 1 link".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "true")

import django

django.setup()

from django.template import engines  # noqa: E402
from django.utils import translation  # noqa: E402

from campaigns.models import Campaign  # noqa: E402
from campaigns.notices import (  # noqa: E402
    MARKERS,
    date_display,
    notice_build,
    notice_object_url,
    notice_personalise,
    notice_unsubscribe_url,
)
from optout.links import LinkClaims  # noqa: E402
from optout.models import Purpose  # noqa: E402


def frozen_version(language: str):
    purpose = Purpose(pk=1, slug="ai-training", name="training and improving AI models")
    campaign = Campaign(
        pk=1,
        name="bench",
        purpose=purpose,
        controller_name="Example Social Ltd",
        product_name="Demur Social",
        training_starts_on=dt.date(2027, 1, 27),
        dpo_email="dpo@example.com",
        contact_email="privacy@example.com",
        policy_url="https://example.com/privacy",
    )
    version = notice_build(campaign=campaign, language=language)
    version.pk = 1
    return version


def claims(n: int, language: str) -> LinkClaims:
    return LinkClaims(
        subject_id=f"acct-{n:09d}",
        purpose="ai-training",
        language=language,
        campaign_id=1,
        notice_version_id=1,
    )


def run_frozen_one_link(version, language: str, count: int) -> None:
    unsubscribe = "https://demur.example/optout/unsubscribe/fixed/"
    for n in range(count):
        notice_personalise(
            version,
            name=f"Person {n}",
            object_url=notice_object_url(claims(n, language)),
            unsubscribe_url=unsubscribe,
        )


def run_frozen_two_links(version, language: str, count: int) -> None:
    for n in range(count):
        person = claims(n, language)
        notice_personalise(
            version,
            name=f"Person {n}",
            object_url=notice_object_url(person),
            unsubscribe_url=notice_unsubscribe_url(person),
        )


def run_frozen_links_given(version, language: str, count: int) -> None:
    for n in range(count):
        notice_personalise(
            version,
            name=f"Person {n}",
            object_url=f"https://demur.example/optout/t/{n}/",
            unsubscribe_url=f"https://demur.example/optout/unsubscribe/{n}/",
        )


def run_bare_jinja(version, language: str, count: int) -> None:
    html_env = engines["jinja2"].env
    text_env = html_env.overlay(autoescape=False)
    base = f"notices/{version.template_name}/"
    html = html_env.get_template(base + "body.html")
    inapp = html_env.get_template(base + "inapp.html")
    text = text_env.get_template(base + "body.txt")
    subject = text_env.get_template(base + "subject.txt")
    values = {
        "controller": "Example Social Ltd",
        "product": "Demur Social",
        "start_date": date_display(dt.date(2027, 1, 27), language),
        "dpo_email": "dpo@example.com",
        "contact_email": "privacy@example.com",
        "policy_url": "https://example.com/privacy",
        "lang": language,
        "dir": "ltr",
        "already_objected": False,
        "objected_on": MARKERS["objected_on"],
        "preheader": version.preheader,
        "mailto": lambda address: address,
        "link": lambda url: url,
    }
    with translation.override(language):
        for n in range(count):
            context = {
                **values,
                "greeting": f"Hello Person {n},",
                "object_url": f"https://demur.example/optout/t/{n}/",
                "unsubscribe_url": f"https://demur.example/optout/unsubscribe/{n}/",
            }
            context["subject"] = subject.render(context)
            html.render(context)
            text.render(context)
            inapp.render(context)


def median_rate(run, version, language: str, count: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(version, language, count)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--language", default="de")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    version = frozen_version(args.language)
    run_bare_jinja(version, args.language, 200)  # compile and warm the template caches
    run_frozen_one_link(version, args.language, 200)
    rows = [
        ("frozen + 1 signed link", run_frozen_one_link, args.messages),
        ("frozen + 2 signed links", run_frozen_two_links, args.messages),
        ("frozen, links given", run_frozen_links_given, args.messages),
        ("bare Jinja2 render", run_bare_jinja, max(args.messages // 10, 200)),
    ]
    rates = {label: median_rate(run, version, args.language, count, args.repeats) for label, run, count in rows}
    baseline = rates["bare Jinja2 render"]
    print(f"language {args.language}, {args.messages} messages x {args.repeats} repeats, medians, one core")
    for label, rate in rates.items():
        print(f"  {label:<26} {rate:>12,.0f} messages/s   {rate / baseline:>6.1f}x bare Jinja2")
    target = rates["frozen + 1 signed link"]
    verdict = "met" if target >= 20000 else "NOT met"
    print(f"target >= 20,000 messages/s for 'frozen + 1 signed link': {verdict} ({target:,.0f}/s)")


if __name__ == "__main__":
    main()
