from __future__ import annotations

from django.conf import settings
from django.conf.urls.i18n import i18n_patterns
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from campaigns import views as campaigns_views
from config.health import healthz, readyz
from config.metrics import metrics_view
from core.api import api_not_found
from optout import views as optout_views

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("optout.api_urls")),
    path("api/", include("campaigns.api_urls")),
    # Any other path under /api/ answers 404 in the API's JSON error shape.
    re_path(r"^api/", api_not_found),
    # A notice link with its language prefix cut off: reopen it in the token's language.
    path("optout/t/<str:token>/", optout_views.link_without_language),
]
# Mail providers' tracking webhooks, e.g. /anymail/mailgun/tracking/ (campaigns.tracking),
# only behind anymail's shared secret (HTTP basic auth): without it anyone could post a
# "bounce" and put any address on the suppression list, since some providers sign nothing.
if settings.ANYMAIL.get("WEBHOOK_SECRET"):
    urlpatterns.append(path("anymail/", include("anymail.urls")))
urlpatterns += i18n_patterns(
    path("optout/", include("optout.urls")),
    # The notice mails' List-Unsubscribe target, beside the opt-out pages it links to.
    path("optout/unsubscribe/<str:token>/", campaigns_views.unsubscribe, name="unsubscribe"),
    prefix_default_language=True,
)

# Oversized or malformed request bodies get the localized page, not Django's bare one.
handler400 = "optout.views.bad_request"
handler404 = "optout.views.not_found"
