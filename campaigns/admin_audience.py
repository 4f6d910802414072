"""The audience (recipients) in the admin: list, search and CSV upload.

Imported by campaigns/admin.py so that admin autodiscovery registers it. Recipients are
read-only here: they come from the CSV import (this upload or `manage.py import_audience`)
and the audience API, all through the validation in campaigns.audience.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from campaigns.audience import audience_import
from campaigns.models import Recipient
from core.countries import EU_EEA
from optout.admin import ReadOnlyAdmin
from optout.admin_views import csv_import_view
from optout.models import AuditEntry

UPLOAD_PERMISSION = "campaigns.add_recipient"


class AudienceUploadForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("CSV file"),
        help_text=gettext_lazy(
            "UTF-8, with the columns subject_id, email, language and country. Recipients already "
            "in the audience are updated. Nothing is imported unless every line is valid. Files "
            "of more than a few hundred thousand lines are better imported with "
            "manage.py import_audience."
        ),
    )


class _ChoiceFilter(admin.SimpleListFilter):
    """A filter over a fixed list of codes: Django's own would run SELECT DISTINCT over the
    whole audience on every page load."""

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value else queryset


class LanguageFilter(_ChoiceFilter):
    title = gettext_lazy("language")
    parameter_name = "language"

    def lookups(self, request, model_admin):
        return [(code, name) for code, name in settings.LANGUAGES]


class CountryFilter(_ChoiceFilter):
    title = gettext_lazy("country")
    parameter_name = "country"

    def lookups(self, request, model_admin):
        return [(code, code) for code in EU_EEA]


@admin.register(Recipient)
class RecipientAdmin(ReadOnlyAdmin):
    list_display = [
        "subject_id",
        "email",
        "language",
        "country",
        "updated_at",
        "last_campaign_ended_at",
        "email_erased_at",
    ]
    list_filter = [LanguageFilter, CountryFilter, ("email_erased_at", admin.EmptyFieldListFilter)]
    search_fields = ["=subject_id", "=email"]
    search_help_text = gettext_lazy("Exact subject id or email address.")
    show_full_result_count = False  # count(*) over millions of recipients on every page load
    ordering = ["-id"]
    change_list_template = "campaigns/audience/change_list.html"

    def get_urls(self):
        upload = self.admin_site.admin_view(lambda request: audience_upload_view(self, request))
        return [path("upload/", upload, name="campaigns_recipient_upload"), *super().get_urls()]


def audience_upload_view(model_admin: RecipientAdmin, request):
    """Upload a CSV of recipients: every bad line listed and nothing kept, or everything
    imported with a line in the audit log written in the same transaction."""
    if not request.user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied

    def summary(report) -> tuple[dict, str]:
        counts = {"created": report.created, "updated": report.updated, "unchanged": report.unchanged}
        message = _("{rows} rows read: {created} recipients added, {updated} updated, {unchanged} unchanged.").format(
            rows=report.rows, **counts
        )
        return {"rows": report.rows, **counts}, message

    return csv_import_view(
        model_admin,
        request,
        form=AudienceUploadForm(request.POST or None, request.FILES or None),
        run=audience_import,
        audit_action=AuditEntry.Action.AUDIENCE_IMPORT,
        summary=summary,
        done_url=reverse("admin:campaigns_recipient_changelist"),
        title=_("Upload recipients"),
        template="campaigns/audience/upload.html",
    )
