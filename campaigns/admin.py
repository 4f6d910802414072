from __future__ import annotations

from django.contrib import admin

from campaigns.models import Campaign, NoticeVersion


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "purpose", "status", "created_at"]
    list_filter = ["status", "purpose"]
    search_fields = ["name"]


@admin.register(NoticeVersion)
class NoticeVersionAdmin(admin.ModelAdmin):
    list_display = ["campaign", "language", "content_hash", "created_at"]
    list_filter = ["language"]
    readonly_fields = ["campaign", "language", "content_hash", "subject", "body_html", "body_text", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False  # versions are frozen at launch, never typed in

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
