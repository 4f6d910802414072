from __future__ import annotations

from django.urls import path, register_converter

from campaigns import api


class AnyText:
    """Any text, a slash or a newline included (`path` stops at a newline), so that every
    id reaches the view, which answers 400 for one no subject can have."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyText, "anytext")

urlpatterns = [
    # A subject id may hold a slash (the audience takes any printable id).
    path("v1/subjects/<anytext:subject_id>/notices", api.SubjectNoticesView.as_view(), name="api-notices-list"),
    path("v1/notices/<str:notice_id>/events", api.NoticeEventView.as_view(), name="api-notices-event"),
    path("v1/audience", api.AudienceView.as_view(), name="api-audience"),
]
