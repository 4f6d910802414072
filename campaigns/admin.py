from __future__ import annotations

import logging

from anymail.exceptions import AnymailError
from csp.decorators import csp_update
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import get_language, get_language_info, gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from campaigns import admin_control
from campaigns.models import Campaign, NoticeVersion
from campaigns.notices import CAMPAIGN_VALUE_FIELDS, NoticeNotReady, notice_build, notice_personalise
from campaigns.sample_links import sample_link_view
from campaigns.selectors import catalog_coverage
from campaigns.services import notice_test_send, notice_versions_freeze
from core.countries import country_choices
from optout.models import AuditEntry
from optout.services import audit_record

logger = logging.getLogger(__name__)

# A notice mail shown in a sandboxed frame (srcdoc) lives under the page's CSP, and mails
# carry their styles inline; no script runs there (the sandbox and script-src forbid it).
NOTICE_FRAME_CSP = {"style-src": ["'unsafe-inline'"]}

# What staff see in place of a person's values in previews.
SAMPLE_NAME = "Alex"
SAMPLE_OBJECT_URL = "https://example.invalid/optout/t/sample-token/"
SAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/optout/unsubscribe/sample-token/"

# The campaign's fields staff fill in while it is a draft, as the form groups them.
NOTICE_FIELDS = ("notice_template", *CAMPAIGN_VALUE_FIELDS)
SENDING_FIELDS = (
    "send_mail",
    "send_inapp",
    "countries",
    "languages",
    "objected_policy",
    "scheduled_at",
    "expires_at",
    "send_rate",
)


def _formfield(field, **kwargs):
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")  # Django 6's default, chosen now
    return field.formfield(**kwargs)


class CampaignForm(forms.ModelForm):
    """The audience filter as tick boxes instead of raw JSON."""

    countries = forms.MultipleChoiceField(
        label=_("countries"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: every country."),
    )
    languages = forms.MultipleChoiceField(
        label=_("languages"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: every language."),
    )

    class Meta:
        model = Campaign
        formfield_callback = _formfield
        fields = ("name", "purpose", *NOTICE_FIELDS, *SENDING_FIELDS)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["countries"].choices = country_choices(get_language() or settings.LANGUAGE_CODE)
        self.fields["languages"].choices = [
            (code, get_language_info(code)["name_local"]) for code, _name in settings.LANGUAGES
        ]

    def clean(self):
        data = super().clean()
        if "send_mail" in data and not (data.get("send_mail") or data.get("send_inapp")):
            self.add_error("send_mail", gettext("Choose at least one channel: mail or in-app."))
        start, end = data.get("scheduled_at"), data.get("expires_at")
        if start and end and end <= start:
            self.add_error("expires_at", gettext("The end of sending must come after its start."))
        if data.get("send_rate") == 0:
            self.add_error("send_rate", gettext("The send rate must be at least one mail per second."))
        return data


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    """Created and edited while a draft; from launch on every field is read-only and the
    campaign moves only through the control buttons (campaigns.admin_control)."""

    form = CampaignForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    change_form_template = "admin/campaigns/campaign/change_form.html"
    list_display = ("name", "purpose", "status", "created_at", "launched_at", "notice_preview_link")
    list_filter = ("status", "purpose")
    search_fields = ("name",)
    readonly_fields = ("status", "launched_at", "ended_at", "pause_reason", "notice_preview_link")
    actions = ("freeze_notices",)
    fieldsets = (
        (None, {"fields": ("name", "purpose", "status", "launched_at", "ended_at", "pause_reason")}),
        (
            _("Notice"),
            {"fields": (*NOTICE_FIELDS, "notice_preview_link")},
        ),
        (
            _("Audience and sending"),
            {"fields": SENDING_FIELDS},
        ),
    )

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.status != Campaign.Status.DRAFT:
            return False  # launched: the page is read-only, the buttons move it on
        return super().has_change_permission(request, obj)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        campaign = self.get_object(request, object_id)
        if campaign is not None:
            extra_context = {
                **(extra_context or {}),
                "control_links": admin_control.control_links(request, campaign),
                "report_links": admin_control.report_links(campaign) if campaign.launched_at else [],
                # The panel compares with the status this page was drawn for.
                "progress_url": f"{reverse('admin:campaigns_campaign_progress', args=[campaign.pk])}?shown={campaign.status}"
                if campaign.launched_at
                else "",
                "preview_url": reverse("admin:campaigns_campaign_notice_preview", args=[campaign.pk]),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description=_("notice preview"))
    def notice_preview_link(self, obj: Campaign) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:campaigns_campaign_notice_preview", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, gettext("Notice preview"))

    @admin.action(description=_("Freeze the notice in every language"))
    def freeze_notices(self, request: HttpRequest, queryset) -> None:
        for campaign in queryset:
            try:
                versions = notice_versions_freeze(campaign_id=campaign.pk)
            except NoticeNotReady:
                self.message_user(
                    request,
                    f"{campaign}: {gettext('The campaign lacks values the notice needs: fill in every field under “Notice”.')}",
                    messages.ERROR,
                )
                continue
            self.message_user(
                request,
                ngettext(
                    "%(campaign)s: %(count)s notice version frozen.",
                    "%(campaign)s: %(count)s notice versions frozen.",
                    len(versions),
                )
                % {"campaign": campaign, "count": len(versions)},
            )

    def get_urls(self):
        def wrap(view):
            return self.admin_site.admin_view(lambda request, **kwargs: view(self, request, **kwargs))

        return [
            path(
                "<int:campaign_id>/control/<slug:action>/",
                wrap(admin_control.control_view),
                name="campaigns_campaign_control",
            ),
            path(
                "<int:campaign_id>/progress/",
                wrap(admin_control.progress_view),
                name="campaigns_campaign_progress",
            ),
            # Not behind the staff login: the links in test mails (campaigns.sample_links).
            path(
                "test-link/<slug:kind>/<str:token>/",
                sample_link_view,
                name="campaigns_campaign_test_link",
            ),
            path(
                "<int:campaign_id>/notice-preview/",
                self.admin_site.admin_view(self.notice_preview_view),
                name="campaigns_campaign_notice_preview",
            ),
            path(
                "<int:campaign_id>/notice-preview/send-test/",
                self.admin_site.admin_view(require_POST(self.notice_send_test_view)),
                name="campaigns_campaign_notice_send_test",
            ),
            *super().get_urls(),
        ]

    @method_decorator(csp_update(NOTICE_FRAME_CSP))
    def notice_preview_view(self, request: HttpRequest, campaign_id: int) -> HttpResponse:
        campaign = get_object_or_404(Campaign.objects.select_related("purpose"), pk=campaign_id)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        codes = [code for code, _name in settings.LANGUAGES]
        language = request.GET.get("lang") if request.GET.get("lang") in codes else settings.LANGUAGE_CODE
        already_objected = request.GET.get("variant") == "objected"
        version = NoticeVersion.objects.filter(campaign=campaign, language=language).first()
        frozen = version is not None
        error = ""
        notice = None
        if version is None:
            try:
                version = notice_build(campaign=campaign, language=language)
            except NoticeNotReady:
                error = gettext("The campaign lacks values the notice needs: fill in every field under “Notice”.")
        if version is not None:
            notice = notice_personalise(
                version,
                name=SAMPLE_NAME,
                object_url=SAMPLE_OBJECT_URL,
                unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
                objected_on=campaign.created_at.date() if already_objected else None,
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": campaign,
            "campaign": campaign,
            "title": gettext("Notice preview: %(campaign)s") % {"campaign": campaign},
            "languages": [(code, get_language_info(code)["name_local"]) for code in codes],
            "language": language,
            "language_name": get_language_info(language)["name_local"],
            "already_objected": already_objected,
            "version": version,
            "frozen": frozen,
            "notice": notice,
            "error": error,
            "coverage": [
                (
                    row,
                    ngettext(
                        "%(count)s message missing",
                        "%(count)s messages missing",
                        row.missing,
                    )
                    % {"count": row.missing},
                )
                for row in catalog_coverage()
            ],
            "send_test_url": reverse("admin:campaigns_campaign_notice_send_test", args=[campaign.pk]),
            "staff_email": request.user.email,
        }
        return TemplateResponse(request, "campaigns/notice_preview.html", context)

    def notice_send_test_view(self, request: HttpRequest, campaign_id: int) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        codes = [code for code, _name in settings.LANGUAGES]
        language = request.POST.get("lang")
        already_objected = request.POST.get("variant") == "objected"
        preview = reverse("admin:campaigns_campaign_notice_preview", args=[campaign.pk])
        back = f"{preview}?lang={language}&variant={'objected' if already_objected else 'everyone'}"
        if language not in codes:
            messages.error(request, gettext("Choose one of the notice's languages."))
            return HttpResponseRedirect(preview)
        if not request.user.email:
            messages.error(
                request,
                gettext("Your account has no email address: add one to receive tests."),
            )
            return HttpResponseRedirect(back)
        try:
            notice_test_send(
                campaign_id=campaign.pk,
                language=language,
                to=request.user.email,
                name=request.user.get_full_name() or request.user.get_username(),
                already_objected=already_objected,
            )
            audit_record(
                user=request.user,
                action=AuditEntry.Action.TEST_SEND,
                target=f"{campaign.pk}: {campaign.name}",
                details={"campaign": campaign.pk, "language": language, "already_objected": already_objected},
            )
        except NoticeNotReady:
            messages.error(
                request,
                gettext("The campaign lacks values the notice needs: fill in every field under “Notice”."),
            )
            return HttpResponseRedirect(back)
        except (OSError, AnymailError) as exc:  # smtplib's errors are OSErrors too
            logger.warning("test send of campaign %s failed: %r", campaign.pk, exc)
            messages.error(
                request,
                gettext(
                    "The mail server did not take the test (%(error)s). Nothing was sent: "
                    "try again in a moment, or ask whoever runs the mail settings."
                )
                % {"error": exc.__class__.__name__},
            )
            return HttpResponseRedirect(back)
        messages.success(
            request,
            gettext("Test sent to %(email)s in %(language)s.")
            % {
                "email": request.user.email,
                "language": get_language_info(language)["name_local"],
            },
        )
        return HttpResponseRedirect(back)


@admin.register(NoticeVersion)
class NoticeVersionAdmin(admin.ModelAdmin):
    list_display = ("campaign", "language", "content_hash", "created_at")
    list_filter = ("language",)
    readonly_fields = (
        "campaign",
        "language",
        "content_hash",
        "template_name",
        "template_hash",
        "catalog_hash",
        "created_at",
        "as_sent",
        "subject",
        "preheader",
        "body_text",
        "inapp_body",
        "objected_subject",
        "objected_body_text",
    )
    exclude = (
        "body_html",
        "objected_body_html",
        "objected_preheader",
        "objected_inapp_body",
        "greetings",
        "direction",
    )

    @admin.display(description=_("Mail (HTML)"))
    def as_sent(self, obj: NoticeVersion) -> str:
        notice = notice_personalise(
            obj,
            name=SAMPLE_NAME,
            object_url=SAMPLE_OBJECT_URL,
            unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
        )
        return format_html(
            '<iframe title="{}" sandbox srcdoc="{}" style="width: 100%; max-width: 720px; height: 900px; '
            'border: 1px solid #ccc; background: #fff;"></iframe>',
            gettext("Mail (HTML)"),
            notice.html,
        )

    @method_decorator(csp_update(NOTICE_FRAME_CSP))
    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, extra_context)

    def has_add_permission(self, request) -> bool:
        return False  # versions are frozen at launch, never typed in

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# The audience admin lives in its own module (recipients and their CSV upload).
from campaigns import admin_audience  # noqa: E402,F401
