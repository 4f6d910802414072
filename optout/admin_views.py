"""Staff tools on the ledger's admin pages: record an objection received by letter or
email, import past objections from a file, export objections as CSV. Each is one thin
view over a service, and each leaves a line in the audit log."""

from __future__ import annotations

import csv
import datetime as dt
import tempfile

from django import forms
from django.contrib import messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseBadRequest, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from optout.imports import objections_import
from optout.models import AuditEntry, Purpose, Source
from optout.services import LedgerError, audit_record, objection_record


class StaffEntryForm(forms.Form):
    subject_id = forms.CharField(
        label=gettext_lazy("Subject id"), max_length=128, help_text=gettext_lazy("The person's account id.")
    )
    purpose = forms.ModelChoiceField(
        label=gettext_lazy("Purpose"), queryset=Purpose.objects.all(), to_field_name="slug", empty_label=None
    )
    received_on = forms.DateField(
        label=gettext_lazy("Received on"),
        help_text=gettext_lazy("The day the letter or email arrived; the objection applies from then."),
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    channel = forms.ChoiceField(
        label=gettext_lazy("Received by"),
        choices=[
            ("letter", gettext_lazy("letter")),
            ("email", gettext_lazy("email")),
            ("other", gettext_lazy("other")),
        ],
    )
    email = forms.EmailField(label=gettext_lazy("Email for the receipt"), required=False)
    note = forms.CharField(
        label=gettext_lazy("Reason or note"), required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3})
    )

    def clean_received_on(self) -> dt.date:
        day = self.cleaned_data["received_on"]
        if day > timezone.now().date():
            raise forms.ValidationError(_("The day it arrived cannot be in the future."))
        return day


class ImportForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("CSV file"),
        help_text=gettext_lazy(
            "UTF-8, with the columns subject_id, purpose, received_at, source and optionally email. "
            "Nothing is imported unless every line is valid. Files of more than a few hundred "
            "thousand lines are better imported with manage.py import_objections."
        ),
    )


def _require(request, codename: str) -> None:
    if not request.user.has_perm(f"optout.{codename}"):
        raise PermissionDenied


def staff_entry_view(model_admin, request):
    _require(request, "record_objection")
    form = StaffEntryForm(request.POST or None, initial={"purpose": "ai-training", "channel": "letter"})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        received_at = dt.datetime.combine(data["received_on"], dt.time(0, 0), tzinfo=dt.UTC)
        try:
            with transaction.atomic():
                receipt = objection_record(
                    subject_id=data["subject_id"],
                    purpose=data["purpose"].slug,
                    source=Source.STAFF_ENTRY,
                    received_at=received_at,
                    email=data["email"],
                    reason=data["note"],
                    staff_user=request.user.get_username(),
                )
                audit_record(
                    user=request.user,
                    action=AuditEntry.Action.STAFF_ENTRY,
                    target=data["subject_id"],
                    details={"receipt": receipt.receipt, "channel": data["channel"], "new": receipt.created},
                )
        except LedgerError as error:
            form.add_error(None, str(error))
        else:
            if receipt.created:
                messages.success(
                    request, _("Objection recorded. Receipt number: {receipt}.").format(receipt=receipt.receipt)
                )
            else:
                messages.info(
                    request,
                    _("This person had already objected (receipt {receipt}); nothing was changed.").format(
                        receipt=receipt.receipt
                    ),
                )
            url = reverse("admin:optout_objectionevent_changelist")
            return HttpResponseRedirect(f"{url}?{urlencode({'subject_id': data['subject_id']})}")
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": _("Record an objection received by letter or email"),
        "form": form,
    }
    return TemplateResponse(request, "admin/optout/staff_form.html", context, status=400 if form.errors else 200)


def import_view(model_admin, request):
    _require(request, "import_objections")

    def summary(report) -> tuple[dict, str]:
        details = {"rows": report.rows, "imported": report.imported, "already_recorded": report.already_recorded}
        message = _(
            "{rows} rows read: {imported} objections imported, {already} already recorded, "
            "{duplicates} duplicates in the file."
        ).format(
            rows=report.rows,
            imported=report.imported,
            already=report.already_recorded,
            duplicates=report.duplicates_in_file,
        )
        return details, message

    return csv_import_view(
        model_admin,
        request,
        form=ImportForm(request.POST or None, request.FILES or None),
        run=objections_import,
        audit_action=AuditEntry.Action.IMPORT,
        summary=summary,
        done_url=reverse("admin:optout_objectionevent_changelist"),
        title=_("Import past objections"),
        template="admin/optout/staff_form.html",
    )


PROBLEMS_SHOWN = 200


def csv_import_view(
    model_admin, request, *, form, run, audit_action: str, summary, done_url: str, title: str, template: str
):
    """An all-or-nothing CSV import from the admin (objections, the audience): every bad
    line listed and nothing kept, or everything imported with its audit line written in
    the same transaction. `run(path)` returns a LineErrors report; `summary(report)`
    gives the audit details and the success message."""
    problems: list[str] = []
    more = 0
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        with tempfile.NamedTemporaryFile(suffix=".csv") as handle:
            for chunk in upload.chunks():
                handle.write(chunk)
            handle.flush()
            with transaction.atomic():
                report = run(handle.name)
                if report.ok:
                    details, message = summary(report)
                    audit_record(user=request.user, action=audit_action, target=upload.name, details=details)
        if report.ok:
            messages.success(request, message)
            return HttpResponseRedirect(done_url)
        problems = report.errors[:PROBLEMS_SHOWN]
        more = report.error_count - len(problems)
        form.add_error(None, _("Nothing was imported: the file has problems, listed below."))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
        "form": form,
        "problems": problems,
        "more_problems": more,
    }
    return TemplateResponse(request, template, context, status=400 if form.errors else 200)


class _Echo:
    def write(self, value: str) -> str:
        return value


EXPORT_COLUMNS = (
    "receipt",
    "subject_id",
    "purpose",
    "action",
    "source",
    "received_at",
    "effective_at",
    "recorded_at",
    "campaign_id",
    "staff_user",
)


# A cell that starts with one of these is a formula to a spreadsheet; subject ids come
# from anyone (the public form's account id, the API), so such a cell gets a leading
# apostrophe, which spreadsheets show as text and do not display.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_text(text: str) -> str:
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def export_view(model_admin, request):
    """The events the change list shows with its current filters, as CSV, streamed."""
    _require(request, "export_objections")
    try:
        changelist = model_admin.get_changelist_instance(request)
    except IncorrectLookupParameters:
        return HttpResponseBadRequest(_("These filters are not valid."), content_type="text/plain; charset=utf-8")
    queryset = changelist.get_queryset(request).select_related("purpose").order_by("id")
    audit_record(
        user=request.user,
        action=AuditEntry.Action.EXPORT,
        target=request.GET.urlencode()[:300] or _("all objection events"),
    )
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(EXPORT_COLUMNS)
        for event in queryset.iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    event.receipt,
                    _spreadsheet_text(event.subject_id),
                    event.purpose.slug,
                    event.action,
                    event.source,
                    event.received_at.isoformat(),
                    event.effective_at.isoformat(),
                    event.recorded_at.isoformat(),
                    event.campaign_id or "",
                    _spreadsheet_text(event.staff_user),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="objections-{stamp}.csv"'
    return response
