from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from optout.ledger import parse_receipt
from optout.models import ApiClient, ApiScope, ObjectionEvent, ObjectionState, Purpose


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

    def get_search_results(self, request, queryset, search_term):
        # A receipt number holds the event's id: found through the primary key.
        found = parse_receipt(search_term)
        if found:
            event_id, code = found
            return queryset.filter(Q(pk=event_id, receipt_code=code) | Q(subject_id=search_term.strip())), False
        return super().get_search_results(request, queryset, search_term)


@admin.register(ObjectionState)
class ObjectionStateAdmin(ReadOnlyAdmin):
    list_display = ["subject_id", "purpose", "objected", "source", "received_at", "effective_at", "receipt"]
    list_filter = ["purpose", "objected", "source", ("received_at", admin.DateFieldListFilter)]
    search_fields = ["=subject_id"]
    search_help_text = _("Exact subject id or receipt number.")
    list_select_related = ["purpose"]
    show_full_result_count = False
    ordering = ["-updated_at"]

    def get_search_results(self, request, queryset, search_term):
        found = parse_receipt(search_term)
        if found:
            event = ObjectionEvent.objects.filter(pk=found[0], receipt_code=found[1]).first()
            matches = Q(subject_id=search_term.strip())
            if event:
                matches |= Q(subject_id=event.subject_id, purpose_id=event.purpose_id)
            return queryset.filter(matches), False
        return super().get_search_results(request, queryset, search_term)


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
            obj.save()
            return
        key = ApiClient.objects.assign_key(obj)
        obj.save()
        messages.warning(
            request,
            gettext("The API key for {name} is: {key} — store it somewhere safe now: it will not be shown again.").format(
                name=obj.name, key=key
            ),
        )

    @admin.action(description=_("Revoke the selected API keys"), permissions=["change"])
    def revoke(self, request, queryset) -> None:
        count = queryset.filter(revoked=False).update(revoked=True)
        messages.success(
            request, ngettext("{count} API key revoked.", "{count} API keys revoked.", count).format(count=count)
        )


# The library's own key model is unused: Demur's keys are ApiClient rows, with scopes.
admin.site.unregister(APIKey)
