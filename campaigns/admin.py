from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import get_language_info, gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from campaigns.models import Campaign, NoticeVersion
from campaigns.notices import NoticeNotReady, notice_build, notice_personalise
from campaigns.selectors import catalog_coverage
from campaigns.services import notice_test_send, notice_versions_freeze

# What staff see in place of a person's values in previews.
SAMPLE_NAME = "Alex"
SAMPLE_OBJECT_URL = "https://example.invalid/optout/t/sample-token/"
SAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/optout/unsubscribe/sample-token/"


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "purpose", "status", "created_at", "notice_preview_link")
    list_filter = ("status", "purpose")
    search_fields = ("name",)
    readonly_fields = ("notice_preview_link",)
    actions = ("freeze_notices",)
    fieldsets = (
        (None, {"fields": ("name", "purpose", "status")}),
        (
            _("Notice"),
            {
                "fields": (
                    "notice_template",
                    "controller_name",
                    "product_name",
                    "training_starts_on",
                    "dpo_email",
                    "contact_email",
                    "policy_url",
                    "notice_preview_link",
                )
            },
        ),
    )

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
        return [
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

    def notice_preview_view(
        self, request: HttpRequest, campaign_id: int
    ) -> HttpResponse:
        campaign = get_object_or_404(
            Campaign.objects.select_related("purpose"), pk=campaign_id
        )
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        codes = [code for code, _name in settings.LANGUAGES]
        language = (
            request.GET.get("lang")
            if request.GET.get("lang") in codes
            else settings.LANGUAGE_CODE
        )
        already_objected = request.GET.get("variant") == "objected"
        version = NoticeVersion.objects.filter(
            campaign=campaign, language=language
        ).first()
        frozen = version is not None
        error = ""
        notice = None
        if version is None:
            try:
                version = notice_build(campaign=campaign, language=language)
            except NoticeNotReady:
                error = gettext(
                    "The campaign lacks values the notice needs: fill in every field under “Notice”."
                )
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
            "languages": [
                (code, get_language_info(code)["name_local"]) for code in codes
            ],
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
            "send_test_url": reverse(
                "admin:campaigns_campaign_notice_send_test", args=[campaign.pk]
            ),
            "staff_email": request.user.email,
        }
        return TemplateResponse(request, "campaigns/notice_preview.html", context)

    def notice_send_test_view(
        self, request: HttpRequest, campaign_id: int
    ) -> HttpResponse:
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
        except NoticeNotReady:
            messages.error(
                request,
                gettext(
                    "The campaign lacks values the notice needs: fill in every field under “Notice”."
                ),
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

    def has_add_permission(self, request) -> bool:
        return False  # versions are frozen at launch, never typed in

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

# The audience admin lives in its own module (recipients and their CSV upload).
from campaigns import admin_audience  # noqa: E402,F401
