"""The platform's side of the API (v1): the in-app channel (a subject's pending notices,
rendered in their language, and what the person did with them) and the audience sync.
Auth, errors and throttling are the objection API's (optout.api)."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers

from campaigns.audience import COLUMNS as AUDIENCE_COLUMNS
from campaigns.audience import AudienceReport, audience_items_clean, audience_load
from campaigns.selectors import inapp_notices
from campaigns.services import INAPP_EVENTS, inapp_event_record
from core.api import COMMON_ERRORS, ERROR_RESPONSE, BadRequest, PayloadTooLarge, timestamp_or_none
from core.countries import EU_EEA
from optout.api import ApiView, subject_id_message
from optout.ledger import SUBJECT_ID_MAX, subject_id_valid
from optout.models import ApiScope

_NOTICE_FIELDS = {
    "id": serializers.IntegerField(help_text=_("Report events for this notice with this id.")),
    "campaign_id": serializers.IntegerField(),
    "purpose": serializers.CharField(),
    "language": serializers.CharField(),
    "direction": serializers.ChoiceField(["ltr", "rtl"]),
    "notice_version": inline_serializer(
        "InappNoticeVersion", {"id": serializers.IntegerField(), "content_hash": serializers.CharField()}
    ),
    "already_objected": serializers.BooleanField(),
    "title": serializers.CharField(),
    "html": serializers.CharField(help_text=_("The notice as HTML, with the signed objection link.")),
    "object_url": serializers.URLField(allow_null=True, help_text=_("None when the person already objects.")),
    "shown_at": serializers.DateTimeField(allow_null=True),
}


class EventInputSerializer(serializers.Serializer):
    event = serializers.ChoiceField(INAPP_EVENTS)


class SubjectNoticesView(ApiView):
    required_scope = ApiScope.NOTICES_READ

    @extend_schema(
        operation_id="notices_list",
        summary=str(_("A subject's pending in-app notices")),
        responses={
            200: inline_serializer(
                "InappNotices", {"notices": inline_serializer("InappNotice", _NOTICE_FIELDS, many=True)}
            ),
            **COMMON_ERRORS,
        },
    )
    def get(self, request, subject_id: str):
        if not subject_id_valid(subject_id):
            raise BadRequest(subject_id_message(), code="bad_subject_id")
        notices = []
        for item in inapp_notices(subject_id=subject_id):
            delivery, version = item.delivery, item.delivery.notice_version
            notices.append(
                {
                    "id": delivery.pk,
                    "campaign_id": delivery.campaign_id,
                    "purpose": version.campaign.purpose.slug,
                    "language": version.language,
                    "direction": version.direction,
                    "notice_version": {"id": version.pk, "content_hash": version.content_hash},
                    "already_objected": delivery.objected_at is not None,
                    "title": item.notice.subject,
                    "html": item.notice.inapp,
                    "object_url": item.object_url if delivery.objected_at is None else None,
                    "shown_at": timestamp_or_none(delivery.shown_at),
                }
            )
        return JsonResponse({"notices": notices})


class NoticeEventView(ApiView):
    required_scope = ApiScope.NOTICES_READ

    @extend_schema(
        operation_id="notices_event",
        summary=str(_("Report that a notice was shown, clicked or dismissed")),
        description=str(_("Each event is recorded once, at its first report; repeating it changes nothing.")),
        request=EventInputSerializer,
        responses={
            200: inline_serializer(
                "InappNoticeEvents",
                {
                    "id": serializers.IntegerField(),
                    "shown_at": serializers.DateTimeField(allow_null=True),
                    "clicked_at": serializers.DateTimeField(allow_null=True),
                    "dismissed_at": serializers.DateTimeField(allow_null=True),
                },
            ),
            404: ERROR_RESPONSE,
            411: ERROR_RESPONSE,
            **COMMON_ERRORS,
        },
    )
    def post(self, request, notice_id: str):
        data = EventInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        delivery = None
        if notice_id.isascii() and notice_id.isdigit() and 0 < int(notice_id) < 2**63:
            delivery = inapp_event_record(delivery_id=int(notice_id), event=data.validated_data["event"])
        if delivery is None:
            raise exceptions.NotFound(_("There is no in-app notice {id}.").format(id=notice_id))
        return JsonResponse(
            {
                "id": delivery.pk,
                "shown_at": timestamp_or_none(delivery.shown_at),
                "clicked_at": timestamp_or_none(delivery.clicked_at),
                "dismissed_at": timestamp_or_none(delivery.dismissed_at),
            }
        )


# --- The audience --------------------------------------------------------------------------

AUDIENCE_MAX_ITEMS = 10_000
# Ten thousand recipients with the longest subject ids and addresses, JSON-escaped.
# Django's cap on a body read into memory (DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB by default):
# 10,000 recipients of usual length fit; a larger body gets the 413 that names the limit.
AUDIENCE_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 16 * 1024 * 1024

_RECIPIENT_SCHEMA = {
    "type": "object",
    "required": list(AUDIENCE_COLUMNS),
    "properties": {
        "subject_id": {"type": "string", "minLength": 1, "maxLength": SUBJECT_ID_MAX},
        "email": {"type": "string", "format": "email", "maxLength": 254},
        "language": {"type": "string", "enum": [code for code, _name in settings.LANGUAGES]},
        "country": {"type": "string", "enum": sorted(EU_EEA)},
    },
}


@extend_schema_field({"type": "array", "minItems": 1, "maxItems": AUDIENCE_MAX_ITEMS, "items": _RECIPIENT_SCHEMA})
class RecipientListField(serializers.Field):
    """Up to AUDIENCE_MAX_ITEMS recipients, checked in one loop by the rules the CSV
    import uses (campaigns.audience); a nested serializer per item would cost more than
    the upsert. Errors name each bad item by index and field."""

    def to_internal_value(self, data):
        if not isinstance(data, list):
            raise serializers.ValidationError(_("Expected a list of recipients."))
        if not data:
            raise serializers.ValidationError(_("Send at least one recipient."))
        if len(data) > AUDIENCE_MAX_ITEMS:
            raise PayloadTooLarge(
                _("At most {limit} recipients per request; this one has {count}.").format(
                    limit=AUDIENCE_MAX_ITEMS, count=len(data)
                )
            )
        rows, errors = audience_items_clean(data)
        if errors:
            raise serializers.ValidationError(errors)
        return rows

    def to_representation(self, value):
        return value


class AudienceInputSerializer(serializers.Serializer):
    recipients = RecipientListField(
        help_text=_("Each person's account id, email, language and EU/EEA country (ISO 3166 code).")
    )


class AudienceView(ApiView):
    required_scope = ApiScope.AUDIENCE_WRITE

    @extend_schema(
        operation_id="audience_upsert",
        summary=str(_("Add or update up to 10,000 recipients")),
        description=str(
            _(
                "All or nothing: the whole body is checked first, and if any recipient is not "
                "valid nothing is kept and the answer names each bad item by its index and "
                "field. A subject already in the audience is updated; sending the same "
                "recipients again changes nothing."
            )
        ),
        request=AudienceInputSerializer,
        responses={
            200: inline_serializer(
                "AudienceResult",
                {
                    "received": serializers.IntegerField(),
                    "created": serializers.IntegerField(),
                    "updated": serializers.IntegerField(),
                    "unchanged": serializers.IntegerField(),
                },
            ),
            411: ERROR_RESPONSE,
            413: ERROR_RESPONSE,
            415: ERROR_RESPONSE,
            **COMMON_ERRORS,
        },
    )
    def post(self, request):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > AUDIENCE_MAX_BODY_BYTES:
            raise PayloadTooLarge(_("The body may have at most {limit} bytes.").format(limit=AUDIENCE_MAX_BODY_BYTES))
        data = AudienceInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        report = audience_load(data.validated_data["recipients"], AudienceReport())
        return JsonResponse(
            {
                "received": report.rows,
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
            }
        )
