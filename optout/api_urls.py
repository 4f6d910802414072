from __future__ import annotations

from django.urls import path

from optout import api

urlpatterns = [
    path("v1/objections/changes", api.ChangeFeedView.as_view(), name="api-objections-changes"),
    path("v1/objections/check", api.CheckView.as_view(), name="api-objections-check"),
    path("v1/objections/export", api.ExportView.as_view(), name="api-objections-export"),
    path("v1/objections", api.RecordObjectionView.as_view(), name="api-objections-record"),
    # Any subject id, in the query string; the path form below cannot carry a slash, nor
    # an id spelt like one of the paths above.
    path("v1/objections/subject", api.SubjectLookupView.as_view(), name="api-objections-subject-lookup"),
    path("v1/objections/<str:subject_id>", api.SubjectView.as_view(), name="api-objections-subject"),
]
