#!/usr/bin/env python3
"""Demur's translation catalogs: extract, compile, check. Babel only; no GNU gettext.

    .venv/bin/python scripts/i18n.py extract [--root locale]   # sources -> every django.po
    .venv/bin/python scripts/i18n.py compile [--root locale]   # django.po -> django.mo
    .venv/bin/python scripts/i18n.py check   [--root locale]   # fails on any gap (exit 1)
    .venv/bin/python scripts/i18n.py fill FILE.json ...        # translations from JSON -> django.po

Each catalog root has its own sources (ROOTS below). `extract` reads the Python code
(gettext, gettext_lazy, pgettext, ngettext ...), the Jinja2 templates (jinja2's Babel
extractor) and the Django templates (Django's own templatize) together, and merges the
result into locale/<lang>/LC_MESSAGES/django.po for every language, keeping existing
translations; English, the source language, gets msgstr = msgid. `check` fails when a
catalog is missing or out of date with the sources, a message is untranslated or fuzzy,
a plural has the wrong number of forms, a translation's placeholders (`%(name)s` and
`{name}`) differ from the source's, or a catalog does not compile.
"""

from __future__ import annotations

import argparse
import copy
import gettext
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.extract import (
    DEFAULT_KEYWORDS,
    extract_from_dir,
    extract_from_file,
    extract_python,
)
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po, write_po

BASE_DIR = Path(__file__).resolve().parent.parent
DOMAIN = "django"
SOURCE_LANGUAGE = "en"
# Kept equal to settings.LANGUAGES (tests/test_catalogs.py checks it): the script runs
# without Django settings, on a fresh machine, before anything else is configured.
LANGUAGES = (
    *("bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu"),
    *("is", "it", "lt", "lv", "mt", "nb", "nl", "pl", "pt", "ro", "sk", "sl", "sv"),
)

KEYWORDS = {
    **DEFAULT_KEYWORDS,
    "gettext_lazy": None,
    "gettext_noop": None,
    "ngettext_lazy": (1, 2),
    "pgettext_lazy": ((1, "c"), 2),
    "npgettext_lazy": ((1, "c"), 2, 3),
}
JINJA = (
    "jinja2.ext:babel_extract",
    {"extensions": "jinja2.ext.i18n", "silent": "false"},
)
PYTHON = ("python", {})


def extract_django_template(fileobj, keywords, comment_tags, options):
    """Babel extraction method for Django templates: Django's templatize (what
    makemessages feeds to xgettext) turns {% translate %} and {% blocktranslate %} into
    gettext calls, which Babel's Python extractor then reads."""
    from django.utils.translation.template import templatize

    code = templatize(fileobj.read().decode("utf-8"))
    yield from extract_python(io.BytesIO(code.encode("utf-8")), keywords, comment_tags, options)


DJANGO = (extract_django_template, {})


@dataclass(frozen=True)
class Source:
    path: str  # a folder or a file, relative to the project
    method: tuple
    pattern: str = "**.py"


@dataclass(frozen=True)
class Root:
    locale: str  # relative to the project
    sources: tuple[Source, ...]


ROOTS = {
    "locale": Root(
        "locale",
        (
            Source("config", PYTHON),
            Source("campaigns", PYTHON),
            Source("templates/notices", JINJA, "**"),
            Source("templates/django", DJANGO, "**.html"),
        ),
    ),
    "optout/locale": Root(
        "optout/locale",
        (
            Source("optout", PYTHON),
            Source("core", PYTHON),  # the API's error messages, shared with campaigns
            Source("templates/optout", JINJA, "**"),
            Source("templates/layout.html", JINJA),
        ),
    ),
}

PLACEHOLDER_RE = re.compile(r"%\((\w+)\)[#0 +-]*\d*(?:\.\d+)?[sdifr]|(?<!\{)\{(\w+)(?:![rsa])?(?::[^{}]*)?\}(?!\})")


def placeholders(text: str) -> set[str]:
    return {a or b for a, b in PLACEHOLDER_RE.findall(text)}


def _catalog_file(base: Path, root: Root, language: str) -> Path:
    return base / root.locale / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def extract_template(base: Path, root: Root) -> Catalog:
    """Every message of the root's sources, as a template catalog (a .pot in memory)."""
    template = Catalog(project="Demur", domain=DOMAIN, fuzzy=False)
    for source in root.sources:
        path = base / source.path
        if not path.exists():
            continue
        method, options = source.method
        if path.is_file():
            found = (
                (str(path.relative_to(base)), *message)
                for message in extract_from_file(method, str(path), keywords=KEYWORDS, options=options)
            )
            results = ((filename, lineno, msg, comments, ctx) for filename, lineno, msg, comments, ctx in found)
        else:
            results = (
                (f"{source.path}/{filename}", lineno, msg, comments, ctx)
                for filename, lineno, msg, comments, ctx in extract_from_dir(
                    str(path),
                    method_map=[(source.pattern, method)],
                    options_map={source.pattern: options},
                    keywords=KEYWORDS,
                )
            )
        for filename, lineno, message, comments, context in results:
            template.add(
                message,
                None,
                [(filename, lineno)],
                auto_comments=comments,
                context=context,
            )
    return template


def _read(path: Path, *, strict: bool = False) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, abort_invalid=strict)


def extract(base: Path, root: Root) -> list[Path]:
    template = extract_template(base, root)
    written = []
    for language in LANGUAGES:
        path = _catalog_file(base, root, language)
        if path.exists():
            catalog = _read(path)
        else:
            catalog = Catalog(
                locale=Locale.parse(language),
                project="Demur",
                domain=DOMAIN,
                fuzzy=False,
            )
        catalog.update(copy.deepcopy(template), no_fuzzy_matching=True, update_header_comment=False)
        if language == SOURCE_LANGUAGE:
            for message in catalog:
                if isinstance(message.id, str) and not message.string:
                    message.string = message.id
                elif message.id and not isinstance(message.id, str) and not any(message.string):
                    message.string = tuple(message.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            write_po(
                handle,
                catalog,
                width=100,
                ignore_obsolete=True,
                omit_header=False,
                sort_output=False,
            )
        written.append(path)
    return written


def _mo_bytes(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def compile_root(base: Path, root: Root) -> list[Path]:
    compiled = []
    for path in sorted((base / root.locale).glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        target = path.with_suffix(".mo")
        # Atomic: other processes (a running server, a parallel test run) may read it.
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_bytes(_mo_bytes(_read(path)))
        os.replace(partial, target)
        compiled.append(target)
    return compiled


def check_root(base: Path, root: Root) -> list[str]:
    """Every problem of the root's catalogs, one line each; empty when all is well."""
    problems: list[str] = []
    template = extract_template(base, root)
    wanted = {
        (message.context, message.id if isinstance(message.id, str) else message.id[0])
        for message in template
        if message.id
    }
    for language in LANGUAGES:
        path = _catalog_file(base, root, language)
        where = str(path.relative_to(base))
        if not path.exists():
            problems.append(f"{where}: missing (run: scripts/i18n.py extract)")
            continue
        try:
            catalog = _read(path, strict=True)
        except (PoFileError, ValueError, UnicodeError, IndexError) as error:
            problems.append(f"{where}: does not parse: {error}")
            continue
        have = {(m.context, m.id if isinstance(m.id, str) else m.id[0]) for m in catalog if m.id}
        for _context, msgid in sorted(wanted - have, key=str):
            problems.append(f"{where}: not in the catalog (run extract): {msgid!r}")
        nplurals = catalog.num_plurals
        for message in catalog:
            if not message.id:
                continue
            label = (
                f"{where}:{message.lineno}: {str(message.id if isinstance(message.id, str) else message.id[0])[:60]!r}"
            )
            if message.fuzzy:
                problems.append(f"{label} is fuzzy")
            if message.pluralizable:
                source = placeholders(message.id[0]) | placeholders(message.id[1])
                forms = list(message.string) if isinstance(message.string, (list, tuple)) else [message.string]
                if len(forms) != nplurals:
                    problems.append(f"{label} has {len(forms)} plural forms, the language has {nplurals}")
            else:
                source = placeholders(message.id)
                forms = [message.string]
            for form in forms:
                if not form:
                    problems.append(f"{label} is untranslated")
                elif placeholders(form) != source:
                    problems.append(
                        f"{label} placeholders {sorted(placeholders(form))} differ from the source's {sorted(source)}"
                    )
        for error_message, errors in catalog.check():
            for error in errors:
                problems.append(f"{where}:{error_message.lineno}: {error}")
        try:
            gettext.GNUTranslations(io.BytesIO(_mo_bytes(catalog)))
        except (OSError, ValueError, TypeError, KeyError, UnicodeError) as error:
            problems.append(f"{where}: does not compile: {error}")
    return problems


def fill(base: Path, files: list[Path]) -> list[str]:
    """Write translations handed over as JSON into the catalogs (run extract first).

    Each file is a list of {"root", "msgid", "msgctxt"?, "msgid_plural"?, "msgstr":
    {language: text, or a list of plural forms}}. Returns one line per entry that the
    catalogs do not hold (a message no longer in the sources, or a misspelt msgid).
    """
    entries = []
    for file in files:
        entries.extend(json.loads(file.read_text(encoding="utf-8")))
    unknown: list[str] = []
    by_root: dict[str, list[dict]] = {}
    for entry in entries:
        if entry["root"] not in ROOTS:
            unknown.append(f"unknown root {entry['root']!r} for {entry['msgid']!r}")
            continue
        by_root.setdefault(entry["root"], []).append(entry)
    for name, root_entries in by_root.items():
        for language in LANGUAGES:
            path = _catalog_file(base, ROOTS[name], language)
            catalog = _read(path)
            for entry in root_entries:
                key = (entry["msgid"], entry["msgid_plural"]) if entry.get("msgid_plural") else entry["msgid"]
                message = catalog.get(key if isinstance(key, str) else key[0], context=entry.get("msgctxt"))
                if message is None:
                    if language == SOURCE_LANGUAGE:
                        unknown.append(f"{name}: not in the catalog (run extract?): {entry['msgid']!r}")
                    continue
                if language == SOURCE_LANGUAGE:
                    translated = entry["msgstr"].get(language) or (
                        list(key) if entry.get("msgid_plural") else entry["msgid"]
                    )
                else:
                    translated = entry["msgstr"].get(language)
                if translated:
                    message.string = tuple(translated) if isinstance(translated, list) else translated
                    message.flags.discard("fuzzy")
            with path.open("wb") as handle:
                write_po(handle, catalog, width=100, ignore_obsolete=True, omit_header=False, sort_output=False)
    return unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["extract", "compile", "check", "fill"])
    parser.add_argument("files", nargs="*", type=Path, help="fill: JSON files of translations")
    parser.add_argument(
        "--root",
        action="append",
        choices=sorted(ROOTS),
        help="one catalog root (default: all)",
    )
    parser.add_argument("--base", type=Path, default=BASE_DIR, help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "fill":
        unknown = fill(args.base, args.files)
        for line in unknown:
            print(line)
        return 1 if unknown else 0
    roots = [ROOTS[name] for name in (args.root or ROOTS)]
    status = 0
    for root in roots:
        if args.command == "extract":
            done = extract(args.base, root)
            if not args.quiet:
                print(f"{root.locale}: {len(done)} catalogs updated")
        elif args.command == "compile":
            done = compile_root(args.base, root)
            if not args.quiet:
                print(f"{root.locale}: {len(done)} catalogs compiled")
        else:
            problems = check_root(args.base, root)
            for problem in problems:
                print(problem)
            if problems:
                status = 1
            elif not args.quiet:
                print(f"{root.locale}: all {len(LANGUAGES)} catalogs complete")
    return status


if __name__ == "__main__":
    sys.exit(main())
