"""The catalog check (scripts/i18n.py check): passes on the real catalogs, and fails on a
temporary copy where one translation is removed, a placeholder is misspelt, a message is
fuzzy, or a catalog does not parse."""

from __future__ import annotations

import gettext
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po, write_po
from django.conf import settings

from scripts import i18n

ROOT = Path(__file__).resolve().parent.parent
# Every catalog root: the notices and staff strings, and the opt-out pages.
CHECKED_ROOTS = ["locale", "optout/locale"]


@pytest.fixture
def copy(tmp_path) -> Path:
    """The sources and catalogs of the top-level root, copied."""
    for name in ("config", "campaigns", "templates", "locale"):
        shutil.copytree(
            ROOT / name,
            tmp_path / name,
            ignore=shutil.ignore_patterns("*.mo", "__pycache__"),
        )
    return tmp_path


def _edit(base: Path, language: str, msgid: str, change) -> None:
    path = base / "locale" / language / "LC_MESSAGES" / "django.po"
    catalog = read_po(path.open("rb"))
    change(catalog[msgid])
    write_po(path.open("wb"), catalog, width=100)


def test_it_knows_the_same_languages_as_the_settings():
    assert list(i18n.LANGUAGES) == [code for code, _name in settings.LANGUAGES]


@pytest.mark.parametrize("root", CHECKED_ROOTS)
def test_it_finds_every_catalog_complete(root):
    assert i18n.check_root(ROOT, i18n.ROOTS[root]) == []


def _new_problems(copy: Path, change) -> list[str]:
    """The problems the check reports after `change`, beyond those it reported before
    (the copy is of the working tree, where others may have added messages just now)."""
    root = i18n.ROOTS["locale"]
    before = set(i18n.check_root(copy, root))
    change()
    return sorted(set(i18n.check_root(copy, root)) - before)


def test_it_fails_when_one_translation_is_removed(copy):
    problems = _new_problems(
        copy,
        lambda: _edit(
            copy,
            "fi",
            "What we will use",
            lambda message: setattr(message, "string", ""),
        ),
    )

    assert len(problems) == 1
    assert "locale/fi/LC_MESSAGES/django.po" in problems[0]
    assert "'What we will use' is untranslated" in problems[0]


def test_it_fails_when_a_placeholder_is_misspelt(copy):
    msgid = "Your information and AI at %(product)s"

    def misspell():
        _edit(
            copy,
            "pl",
            msgid,
            lambda m: setattr(m, "string", m.string.replace("%(product)s", "%(produkt)s")),
        )

    problems = _new_problems(copy, misspell)

    assert problems and all("locale/pl/" in p and "produkt" in p for p in problems)
    assert any("['produkt'] differ from the source's ['product']" in p for p in problems)


def test_it_fails_when_a_brace_placeholder_is_misspelt(copy):
    # Python code may use {name}; the check reads both styles.
    problems = _new_problems(
        copy,
        lambda: _edit(
            copy,
            "sv",
            "Hello %(name)s,",
            lambda message: setattr(message, "string", "Hej {namn},"),
        ),
    )

    assert len(problems) == 1 and "locale/sv/" in problems[0] and "['namn']" in problems[0]


def test_it_fails_when_a_translation_is_fuzzy(copy):
    problems = _new_problems(
        copy,
        lambda: _edit(copy, "de", "Why we use it", lambda message: message.flags.add("fuzzy")),
    )

    assert len(problems) == 1 and "locale/de/" in problems[0] and "is fuzzy" in problems[0]


def test_it_fails_when_a_catalog_does_not_parse(copy):
    path = copy / "locale" / "cs" / "LC_MESSAGES" / "django.po"

    problems = _new_problems(copy, lambda: path.write_text(path.read_text() + '\nmsgid "broken\n'))

    assert any("locale/cs/" in p and "does not parse" in p for p in problems), problems


def test_it_fails_when_a_source_message_is_not_in_the_catalogs(copy):
    body = copy / "templates" / "notices" / "ai-training" / "body.txt"

    problems = _new_problems(
        copy,
        lambda: body.write_text(body.read_text() + '{{ _("A sentence nobody extracted") }}\n'),
    )

    assert len(problems) == len(i18n.LANGUAGES)
    assert all("not in the catalog" in p and "A sentence nobody extracted" in p for p in problems)


def test_it_extracts_python_jinja2_and_django_templates_together(copy):
    template = i18n.extract_template(copy, i18n.ROOTS["locale"])
    sources = {location[0] for message in template for location in message.locations}

    assert any(s.startswith("campaigns/") and s.endswith(".py") for s in sources)
    assert any(s.startswith("config/") for s in sources)
    assert any(s.startswith("templates/notices/") for s in sources)
    assert any(s.startswith("templates/django/") for s in sources)
    assert template.get("Object", context="button") is not None
    assert template.get(("%(count)s message missing", "%(count)s messages missing")) is not None


def test_it_compiles_catalogs_that_gettext_reads_and_the_command_exits_nonzero_on_problems(
    copy,
):
    compiled = i18n.compile_root(copy, i18n.ROOTS["locale"])
    assert len(compiled) == len(i18n.LANGUAGES)
    german = gettext.translation("django", str(copy / "locale"), ["de"])
    assert german.gettext("What we will use") == "Was wir verwenden"

    _edit(copy, "fi", "What we will use", lambda message: setattr(message, "string", ""))
    command = [
        sys.executable,
        str(ROOT / "scripts" / "i18n.py"),
        "check",
        "--base",
        str(copy),
        "--root",
        "locale",
    ]
    failed = subprocess.run(command, check=False, capture_output=True, text=True)

    assert failed.returncode == 1
    assert "locale/fi/LC_MESSAGES/django.po" in failed.stdout and "'What we will use' is untranslated" in failed.stdout


def test_it_fills_translations_handed_over_as_json_and_names_unknown_messages(copy):
    body = copy / "templates" / "notices" / "ai-training" / "body.html"
    body.write_text(body.read_text() + '{{ _("A sentence for the fill test") }}\n')
    i18n.extract(copy, i18n.ROOTS["locale"])
    assert any("A sentence for the fill test" in p for p in i18n.check_root(copy, i18n.ROOTS["locale"]))
    handed_over = copy / "handed-over.json"
    translations = {language: f"[{language}] the sentence" for language in i18n.LANGUAGES if language != "en"}
    handed_over.write_text(
        json.dumps(
            [
                {"root": "locale", "msgid": "A sentence for the fill test", "msgstr": translations},
                {"root": "locale", "msgid": "A sentence in no source", "msgstr": translations},
            ]
        )
    )

    unknown = i18n.fill(copy, [handed_over])

    assert unknown == ["locale: not in the catalog (run extract?): 'A sentence in no source'"]
    assert not any("A sentence for the fill test" in p for p in i18n.check_root(copy, i18n.ROOTS["locale"]))
    i18n.compile_root(copy, i18n.ROOTS["locale"])
    greek = gettext.translation("django", str(copy / "locale"), ["el"])
    assert greek.gettext("A sentence for the fill test") == "[el] the sentence"
