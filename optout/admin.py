from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from optout import admin_views
from optout.ledger import parse_receipt
from optout.models import ApiClient, ApiScope, AuditEntry, ObjectionEvent, ObjectionState, Purpose
from optout.services import audit_record


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
    search_fields = ["=subject_id"]
    search_help_text = _("Exact subject id or receipt number.")
    list_select_related = ["purpose"]
    date_hierarchy = "received_at"
    show_full_result_count = False  # count(*) on a ledger of millions on every page load
    ordering = ["-id"]
    change_list_template = "admin/optout/objectionevent/change_list.html"

    def get_urls(self):
        def wrap(view):
            return self.admin_site.admin_view(lambda request: view(self, request))

        return [
            path("record/", wrap(admin_views.staff_entry_view), name="optout_objectionevent_record"),
            path("import/", wrap(admin_views.import_view), name="optout_objectionevent_import"),
            path("export/", wrap(admin_views.export_view), name="optout_objectionevent_export"),
            *super().get_urls(),
        ]

    def get_search_results(self, request, queryset, search_term):
        # A receipt number holds the event's id: found through the primary key.
        found = parse_receipt(search_term)
        if found:
            event_id, code = found
            return queryset.filter(Q(pk=event_id, receipt_code=code) | Q(subject_id=search_term.strip())), False
        return super().get_search_results(request, queryset, search_term)


@admin.register(ObjectionState)
class ObjectionStateAdmin(ReadOnlyAdmin):
    list_display = ["subject_id", "purpose", "objected", "source", "received_at", "effective_at", "receipt", "history"]
    list_filter = ["purpose", "objected", "source", ("received_at", admin.DateFieldListFilter)]
    search_fields = ["=subject_id"]
    search_help_text = _("Exact subject id or receipt number.")
    list_select_related = ["purpose"]
    show_full_result_count = False
    ordering = ["-updated_at"]

    @admin.display(description=_("history"))
    def history(self, state: ObjectionState) -> str:
        url = reverse("admin:optout_objectionevent_changelist")
        query = urlencode({"subject_id": state.subject_id, "purpose__id__exact": state.purpose_id})
        return format_html('<a href="{}?{}">{}</a>', url, query, gettext("all events"))

    def get_search_results(self, request, queryset, search_term):
        found = parse_receipt(search_term)
        if found:
            event = ObjectionEvent.objects.filter(pk=found[0], receipt_code=found[1]).first()
            matches = Q(subject_id=search_term.strip())
            if event:
                matches |= Q(subject_id=event.subject_id, purpose_id=event.purpose_id)
            return queryset.filter(matches), False
        return super().get_search_results(request, queryset, search_term)


def _jsonable(value):
    """A form value as the audit log's JSON keeps it (dates as ISO 8601 text)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        label=_("scopes"), choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple, required=True
    )

    class Meta:
        model = ApiClient
        fields = ("name", "scopes", "expiry_date", "revoked")


@admin.register(ApiClient)
class ApiClientAdmin(APIKeyModelAdmin):
    """Keys are shown once, on creation; afterwards only their prefix. Revoking is final."""

    form = ApiClientForm
    list_display = ("prefix", "name", "scopes", "created", "last_used_at", "expiry_date", "revoked")
    list_filter = ("revoked", "created")
    actions = ("revoke",)

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "last_used_at"]

    def save_model(self, request, obj, form, change) -> None:
        if change:
            # In the admin's transaction: the key and its audit lines commit together.
            obj.save()
            changed = [name for name in form.changed_data if name != "revoked"]
            if changed:
                audit_record(
                    user=request.user,
                    action=AuditEntry.Action.KEY_CHANGED,
                    target=obj.prefix,
                    details={
                        name: {"before": _jsonable(form.initial.get(name)), "after": _jsonable(form.cleaned_data[name])}
                        for name in changed
                    },
                )
            if "revoked" in form.changed_data and obj.revoked:
                audit_record(user=request.user, action=AuditEntry.Action.KEY_REVOKED, target=obj.prefix)
            return
        key = ApiClient.objects.assign_key(obj)
        obj.save()
        audit_record(
            user=request.user,
            action=AuditEntry.Action.KEY_CREATED,
            target=obj.name,
            details={"prefix": obj.prefix, "scopes": obj.scopes},
        )
        messages.warning(
            request,
            gettext(
                "The API key for {name} is: {key} — store it somewhere safe now: it will not be shown again."
            ).format(name=obj.name, key=key),
        )

    @admin.action(description=_("Revoke the selected API keys"), permissions=["change"])
    def revoke(self, request, queryset) -> None:
        prefixes = list(queryset.filter(revoked=False).values_list("prefix", flat=True))
        count = queryset.filter(prefix__in=prefixes).update(revoked=True)
        audit_record(user=request.user, action=AuditEntry.Action.KEY_REVOKED, target=", ".join(prefixes)[:300])
        messages.success(
            request, ngettext("{count} API key revoked.", "{count} API keys revoked.", count).format(count=count)
        )


# The library's own key model is unused: Demur's keys are ApiClient rows, with scopes.
admin.site.unregister(APIKey)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Who did what and when: readable by both staff roles, editable by nobody."""

    list_display = ["at", "username", "action", "target"]
    list_filter = ["action", ("at", admin.DateFieldListFilter)]
    search_fields = ["=username", "target"]
    date_hierarchy = "at"
    show_full_result_count = False
