"""The reference client's change-feed reader (client/demur_client.feed_pages) on its own:
pages in order, each once, read one ahead in a thread; its errors reach the caller and its
thread ends with the caller. No server: `request` is a stand-in."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from email.message import Message

import pytest

from client.demur_client import DemurUnavailable, feed_pages


def _page(events: list[str], next_cursor: str, has_more: bool) -> bytes:
    body = {"events": [{"subject_id": s} for s in events], "next_cursor": next_cursor, "has_more": has_more}
    return json.dumps(body).encode()


class FakeFeed:
    """Answers the change feed from a dict cursor -> (subjects, next cursor, has_more)."""

    def __init__(self, pages: dict, *, headers: bool = True, fail_at: str | None = None) -> None:
        self.pages, self.headers, self.fail_at = pages, headers, fail_at
        self.asked: list[str] = []

    def __call__(self, path: str, headers: dict):
        """Like ObjectionMirror.send: the request is made now, its answer read later."""
        cursor = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("cursor", [""])[0]
        self.asked.append(cursor)
        return lambda: self.answer(cursor, headers)

    def answer(self, cursor: str, headers: dict) -> tuple[int, Message, bytes]:
        if cursor == self.fail_at:
            raise DemurUnavailable("HTTP 503")
        if headers.get("If-None-Match") == f'"{cursor}"':
            return 304, Message(), b""
        events, next_cursor, has_more = self.pages[cursor]
        reply = Message()
        reply["ETag"] = f'"{cursor}"'
        if self.headers:  # names in lower case, as HTTP/2 proxies send them
            reply["x-next-cursor"], reply["x-has-more"] = next_cursor, "true" if has_more else "false"
        return 200, reply, _page(events, next_cursor, has_more)


PAGES = {"": (["a", "b"], "c1", True), "c1": (["c"], "c2", True), "c2": (["d", "e"], "c3", False)}


@pytest.mark.parametrize("headers", [True, False], ids=["cursor-in-headers", "cursor-only-in-body"])
def test_the_feed_reader_yields_every_page_in_order_once(headers):
    feed = FakeFeed(PAGES, headers=headers)

    pages = list(feed_pages(feed, purpose="ai-training"))

    assert [(asked, [e["subject_id"] for e in page["events"]]) for asked, page, _ in pages] == [
        ("", ["a", "b"]),
        ("c1", ["c"]),
        ("c2", ["d", "e"]),
    ]
    assert [etag for _, _, etag in pages] == ['""', '"c1"', '"c2"'] and feed.asked == ["", "c1", "c2"]


def test_the_feed_reader_raises_the_fetching_threads_error_after_the_pages_before_it():
    feed = FakeFeed(PAGES, fail_at="c2")
    seen = []

    with pytest.raises(DemurUnavailable):
        for asked, _, _ in feed_pages(feed, purpose=None):
            seen.append(asked)
    assert seen == ["", "c1"]


def test_the_feed_reader_stops_its_thread_when_the_caller_stops_early():
    feed = FakeFeed({**PAGES, "c2": (["d"], "c3", True), "c3": (["e"], "c2", True)})  # never ends

    for asked, _, _ in feed_pages(feed, purpose=None):
        if asked == "c1":
            break

    asked = len(feed.asked)
    time.sleep(0.3)
    assert asked <= 5 and len(feed.asked) == asked  # a few pages ahead at most, then nothing
    assert not [t for t in threading.enumerate() if t.name == "demur-feed"]


def test_an_idle_poll_with_the_etag_yields_no_page():
    assert list(feed_pages(FakeFeed(PAGES), purpose=None, cursor="c2", etag='"c2"')) == []
