from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from optout.models import ObjectionEvent, ObjectionState, Purpose


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger can be read in the admin and never written, superusers included:
    changes go through the services, which keep the hash chain and the state in step."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Purpose)
class PurposeAdmin(admin.ModelAdmin):
    list_display = ["slug", "name"]
    search_fields = ["slug", "name"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # events point at purposes; a purpose is forever


@admin.register(ObjectionEvent)
class ObjectionEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "receipt", "subject_id", "purpose", "action", "source", "received_at", "effective_at"]
    list_filter = ["purpose", "action", "source", ("received_at", admin.DateFieldListFilter)]
    search_fields = ["=subject_id", "=receipt"]
    search_help_text = _("Exact subject id or receipt number.")
    list_select_related = ["purpose"]
    date_hierarchy = "received_at"
    show_full_result_count = False  # count(*) on a ledger of millions on every page load
    ordering = ["-id"]


@admin.register(ObjectionState)
class ObjectionStateAdmin(ReadOnlyAdmin):
    list_display = ["subject_id", "purpose", "objected", "source", "received_at", "effective_at", "receipt"]
    list_filter = ["purpose", "objected", "source", ("received_at", admin.DateFieldListFilter)]
    search_fields = ["=subject_id", "=receipt"]
    search_help_text = _("Exact subject id or receipt number.")
    list_select_related = ["purpose"]
    show_full_result_count = False
    ordering = ["-updated_at"]
