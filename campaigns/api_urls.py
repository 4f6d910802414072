from __future__ import annotations

from django.urls import path

from campaigns import api

urlpatterns = [
    # path: a subject id may hold a slash (the audience takes any printable id).
    path("v1/subjects/<path:subject_id>/notices", api.SubjectNoticesView.as_view(), name="api-notices-list"),
    path("v1/notices/<str:notice_id>/events", api.NoticeEventView.as_view(), name="api-notices-event"),
    path("v1/audience", api.AudienceView.as_view(), name="api-audience"),
]
