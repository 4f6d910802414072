from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from campaigns import api as campaigns_api
from optout import api

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("v1/objections/changes", api.ChangeFeedView.as_view(), name="api-objections-changes"),
    path("v1/objections/check", api.CheckView.as_view(), name="api-objections-check"),
    path("v1/objections/export", api.ExportView.as_view(), name="api-objections-export"),
    path("v1/objections", api.RecordObjectionView.as_view(), name="api-objections-record"),
    path("v1/objections/<str:subject_id>", api.SubjectView.as_view(), name="api-objections-subject"),
    path("v1/subjects/<str:subject_id>/notices", campaigns_api.SubjectNoticesView.as_view(), name="api-notices-list"),
    path("v1/notices/<str:notice_id>/events", campaigns_api.NoticeEventView.as_view(), name="api-notices-event"),
    path("v1/audience", campaigns_api.AudienceView.as_view(), name="api-audience"),
]

# Keep last: any other path under /api/ answers 404 in the API's JSON error shape.
urlpatterns.append(re_path(r"^", api.api_not_found))
