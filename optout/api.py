"""The objection API, v1 (DESIGN.md, "The objection API (v1)").

One view per operation: parse, call one selector or service, answer. Hot paths (the
feed, the bulk check, the export) write their JSON directly instead of going through
serializers: a page of 10,000 events must not cost 10,000 serializer calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.http import (
    HttpResponseNotModified,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.decorators import method_decorator
from django.utils.http import parse_etags
from django.utils.translation import gettext_lazy as _
from django.views.decorators.gzip import gzip_page
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.views import APIView

from core.api import (
    COMMON_ERRORS,
    ERROR_RESPONSE,
    BadRequest,
    ErrorSerializer,
    PayloadTooLarge,
    StrictJSONParser,
    Unprocessable,
    exception_handler,
    json_response,
    refuse_unsized_body,
    timestamp_or_none,
)
from core.api import ResyncRequired as ResyncRequiredError
from optout.authentication import ApiKeyAuthentication
from optout.ledger import EARLIEST_RECEIVED_AT, SUBJECT_ID_MAX, subject_id_valid
from optout.models import ApiScope, Purpose, Source
from optout.permissions import HasScope
from optout.selectors import (
    BadCursor,
    Cursor,
    ResyncRequired,
    UnknownPurpose,
    feed_horizon,
    feed_page_json,
    objection_check,
    objection_history,
    objection_state_get,
    objector_lines,
)
from optout.services import IdempotencyKeyReused, LedgerError, objection_record
from optout.throttling import ApiClientRateThrottle

logger = logging.getLogger(__name__)

FEED_MAX_LIMIT = 10_000
FEED_DEFAULT_LIMIT = 1_000
CHECK_MAX_IDS = 10_000
# Ten thousand ids of at most 128 characters, quoted, with commas and some whitespace.
MAX_BODY_BYTES = 2 * 1024 * 1024
IDEMPOTENCY_KEY_MAX = 150
# Sources a platform may report; imports and staff entries have their own flows.
API_SOURCES = [Source.IN_APP, Source.GPC, Source.API, Source.EMAIL_LINK, Source.WEB_FORM]


# --- Schema pieces -------------------------------------------------------------------------


PURPOSE_PARAM = OpenApiParameter(
    "purpose", OpenApiTypes.STR, description=str(_("Purpose slug; ai-training when left out."))
)


class FeedEventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    subject_id = serializers.CharField()
    purpose = serializers.CharField()
    action = serializers.ChoiceField(choices=["objected", "withdrawn"])
    received_at = serializers.DateTimeField()
    effective_at = serializers.DateTimeField()
    source = serializers.CharField()
    seq = serializers.IntegerField(
        min_value=1,
        help_text=_(
            "The event's place in its subject's history for the purpose: 1, 2, 3, ... Apply an event "
            "only if its seq is higher than the one you hold for that subject."
        ),
    )


class FeedPageSerializer(serializers.Serializer):
    events = FeedEventSerializer(many=True)
    next_cursor = serializers.CharField()
    has_more = serializers.BooleanField()


class FeedQuerySerializer(serializers.Serializer):
    cursor = serializers.CharField(required=False, allow_blank=True, help_text=_("Opaque; from next_cursor."))
    limit = serializers.IntegerField(min_value=1, max_value=FEED_MAX_LIMIT, default=FEED_DEFAULT_LIMIT)
    purpose = serializers.CharField(required=False, help_text=_("Only this purpose; all when left out."))


@extend_schema_field({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": SUBJECT_ID_MAX}})
class SubjectIdListField(serializers.Field):
    """Up to CHECK_MAX_IDS subject ids, validated in bulk (a ListField would run a child
    field per id, which costs more than the query)."""

    def to_internal_value(self, data):
        if not isinstance(data, list):
            raise serializers.ValidationError(_("Expected a list of subject ids."))
        if len(data) > CHECK_MAX_IDS:
            raise PayloadTooLarge(
                _("At most {limit} subject ids per request; this one has {count}.").format(
                    limit=CHECK_MAX_IDS, count=len(data)
                )
            )
        # Types and lengths checked by C loops (map); the Python loop runs only to name the
        # first bad item.
        if data and (set(map(type, data)) != {str} or min(map(len, data)) == 0 or max(map(len, data)) > SUBJECT_ID_MAX):
            for index, item in enumerate(data):
                if type(item) is not str or not 0 < len(item) <= SUBJECT_ID_MAX:
                    raise serializers.ValidationError(
                        _("Item {index}: a subject id is a string of 1 to {max} characters.").format(
                            index=index, max=SUBJECT_ID_MAX
                        )
                    )
        # One pass in C over all ids for what PostgreSQL cannot store: NUL and lone surrogates.
        try:
            joined = "\n".join(data)
            joined.encode()
        except UnicodeEncodeError:
            raise serializers.ValidationError(_("Subject ids must be valid Unicode text.")) from None
        if "\x00" in joined:
            raise serializers.ValidationError(_("Subject ids cannot contain NUL characters."))
        return data

    def to_representation(self, value):
        return value


class CheckInputSerializer(serializers.Serializer):
    purpose = serializers.CharField(required=False, max_length=64)
    subject_ids = SubjectIdListField()


class CheckOutputSerializer(serializers.Serializer):
    results = inline_serializer(
        "CheckResult",
        {
            "subject_id": serializers.CharField(),
            "objected": serializers.BooleanField(),
            "effective_at": serializers.DateTimeField(allow_null=True),
        },
        many=True,
    )
    next_cursor = serializers.CharField(help_text=_("Follow the change feed from here to stay consistent."))


class HistoryEventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    action = serializers.ChoiceField(choices=["objected", "withdrawn"])
    source = serializers.CharField()
    received_at = serializers.DateTimeField()
    effective_at = serializers.DateTimeField()


class SubjectOutputSerializer(serializers.Serializer):
    subject_id = serializers.CharField()
    purpose = serializers.CharField()
    objected = serializers.BooleanField()
    received_at = serializers.DateTimeField(allow_null=True)
    effective_at = serializers.DateTimeField(allow_null=True)
    history = HistoryEventSerializer(many=True)


def subject_id_message() -> str:
    return _("A subject id is a string of 1 to {max} printable characters.").format(max=SUBJECT_ID_MAX)


class SubjectIdField(serializers.CharField):
    """One subject id exactly as sent: a JSON string (a number is not turned into one, nor
    is the text trimmed), by the rule every write keeps (optout.ledger.subject_id_valid),
    which is also what a read of one subject accepts."""

    def __init__(self, **kwargs):
        super().__init__(max_length=SUBJECT_ID_MAX, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        if not subject_id_valid(data):
            raise serializers.ValidationError(subject_id_message())
        return data


class ObjectionInputSerializer(serializers.Serializer):
    subject_id = SubjectIdField()
    purpose = serializers.CharField(required=False, max_length=64)
    source = serializers.ChoiceField(choices=[(s.value, s.label) for s in API_SOURCES], default=Source.API.value)
    received_at = serializers.DateTimeField(
        required=False, help_text=_("When the person objected (the tap, the signal); now when left out.")
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    def validate_received_at(self, value):
        if value > timezone.now() + timedelta(minutes=5):
            raise serializers.ValidationError(_("This time is in the future."))
        if value < EARLIEST_RECEIVED_AT:
            raise serializers.ValidationError(
                _("This time is before {date}.").format(date=EARLIEST_RECEIVED_AT.date().isoformat())
            )
        return value


class ReceiptSerializer(serializers.Serializer):
    receipt = serializers.CharField()
    subject_id = serializers.CharField()
    purpose = serializers.CharField()
    objected = serializers.BooleanField()
    received_at = serializers.DateTimeField(allow_null=True)
    effective_at = serializers.DateTimeField(allow_null=True)
    created = serializers.BooleanField(help_text=_("False when the request changed nothing (a repeat)."))


# --- Views ---------------------------------------------------------------------------------


class ApiView(APIView):
    authentication_classes = (ApiKeyAuthentication,)
    permission_classes = (HasScope,)
    throttle_classes = (ApiClientRateThrottle,)
    parser_classes = (StrictJSONParser,)
    required_scope: str = ApiScope.OBJECTIONS_READ

    def get_exception_handler(self):
        return exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        refuse_unsized_body(request)


def _purpose_slug(slug: str | None) -> str:
    slug = slug or settings.DEMUR_DEFAULT_PURPOSE
    if "\x00" in slug:
        raise BadRequest(_("A purpose cannot contain NUL characters."), code="unknown_purpose")
    return slug


def _unknown_purpose(slug: str) -> BadRequest:
    return BadRequest(_("Unknown purpose: {purpose}.").format(purpose=slug), code="unknown_purpose")


def _purpose(slug: str | None) -> Purpose:
    slug = _purpose_slug(slug)
    purpose = Purpose.objects.filter(slug=slug).first()
    if purpose is None:
        raise _unknown_purpose(slug)
    return purpose


def _check_body_size(request) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge(_("The body may have at most {limit} bytes.").format(limit=MAX_BODY_BYTES))


class ChangeFeedView(ApiView):
    @extend_schema(
        operation_id="objections_changes",
        summary=str(_("Objections and withdrawals after a cursor, oldest first")),
        description=str(
            _(
                "Follow next_cursor until has_more is false, then poll with the last cursor. "
                "No event is ever skipped, even when transactions commit out of order. "
                "Send the ETag back in If-None-Match: an idle poll answers 304."
            )
        ),
        parameters=[
            FeedQuerySerializer,
            OpenApiParameter(
                "X-Next-Cursor",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                description=str(_("The page's next_cursor, readable before the body is parsed.")),
            ),
            OpenApiParameter(
                "X-Has-More",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                enum=["true", "false"],
                description=str(_("The page's has_more, readable before the body is parsed.")),
            ),
        ],
        responses={
            200: OpenApiResponse(FeedPageSerializer),
            304: OpenApiResponse(description=str(_("Nothing new since this cursor."))),
            410: OpenApiResponse(
                ErrorSerializer,
                description=str(
                    _(
                        "resync_required: the ledger was restored from a backup that ends before this "
                        "cursor. Download the export again and follow the feed from its cursor; until "
                        "then, use no one's data."
                    )
                ),
            ),
            **COMMON_ERRORS,
        },
    )
    def get(self, request):
        query = FeedQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:
            cursor = Cursor.decode(query.validated_data.get("cursor"))
        except BadCursor:
            raise BadRequest(
                _("This cursor is not valid; use a next_cursor from this API."), code="bad_cursor"
            ) from None
        slug = query.validated_data.get("purpose")
        limit = query.validated_data["limit"]
        if not cursor.allows(slug):
            raise BadRequest(
                _("This cursor was read from the feed of another purpose ({purpose}); continue there.").format(
                    purpose=cursor.scope
                ),
                code="bad_cursor",
            )
        try:
            page = feed_page_json(cursor=cursor, limit=limit, purpose=slug)
        except UnknownPurpose:
            raise _unknown_purpose(slug) from None
        except BadCursor as refused:
            raise BadRequest(str(refused), code="bad_cursor") from None
        except ResyncRequired:
            raise ResyncRequiredError(
                _(
                    "This ledger was restored from a backup that ends before this cursor, so your copy may "
                    "hold changes this server no longer has. Download the export again and follow the "
                    "change feed from its cursor."
                )
            ) from None
        next_cursor = page.next_cursor.encode()
        has_more = "true" if page.has_more else "false"
        # Below the horizon the feed never changes, so (request, next cursor) fixes the body.
        tag = hashlib.sha256(f"{slug}|{limit}|{cursor.encode()}|{next_cursor}|{page.has_more}".encode())
        # The cursor also goes in headers, so a client can ask for the next page before
        # it has parsed this one (client/demur_client.py does).
        headers = {"ETag": f'"{tag.hexdigest()[:32]}"', "X-Next-Cursor": next_cursor, "X-Has-More": has_more}
        if headers["ETag"] in parse_etags(request.headers.get("If-None-Match", "")):
            response = HttpResponseNotModified()
            response["ETag"] = headers["ETag"]
            return response
        body = b"".join(
            [b'{"events":', page.events_json, f',"next_cursor":"{next_cursor}","has_more":{has_more}}}'.encode()]
        )
        return json_response(body, headers={**headers, "Cache-Control": "no-cache"})


class CheckView(ApiView):
    @extend_schema(
        operation_id="objections_check",
        summary=str(_("Whether each of up to 10,000 subjects objects")),
        description=str(
            _(
                "The change feed from next_cursor misses nothing that changes after this answer, "
                "but it may deliver again events the answer already reflects: while any other "
                "transaction is open at the time of the check, the cursor stays behind it, and "
                "events committed since then come again. Apply the feed's events in order and "
                "idempotently, so that one already held changes nothing (an objection of "
                "someone who already objects, a withdrawal of someone who does not)."
            )
        ),
        request=CheckInputSerializer,
        responses={
            200: CheckOutputSerializer,
            411: ERROR_RESPONSE,
            413: ERROR_RESPONSE,
            415: ERROR_RESPONSE,
            **COMMON_ERRORS,
        },
    )
    def post(self, request):
        _check_body_size(request)
        data = CheckInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        slug = _purpose_slug(data.validated_data.get("purpose"))
        subject_ids = data.validated_data["subject_ids"]
        answer = objection_check(purpose=slug, subject_ids=subject_ids)
        if answer is None:
            raise _unknown_purpose(slug)
        return json_response(
            b"".join([b'{"results":', answer.results_json, f',"next_cursor":"{answer.horizon.encode()}"}}'.encode()])
        )


@method_decorator(gzip_page, name="dispatch")
class ExportView(ApiView):
    @extend_schema(
        operation_id="objections_export",
        summary=str(_("Everyone currently objecting, as NDJSON")),
        description=str(
            _(
                "One JSON object per line for each objector, then a last line "
                '{"next_cursor": ..., "count": ...}: continue in the change feed from that '
                "cursor. A stream without that last line was cut off and must not be used. "
                "Compressed with gzip when the request accepts it."
            )
        ),
        parameters=[PURPOSE_PARAM],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR),
            **COMMON_ERRORS,
        },
    )
    def get(self, request):
        purpose = _purpose(request.query_params.get("purpose"))
        horizon = feed_horizon()  # before the state is read (in the stream)
        response = StreamingHttpResponse(_export_lines(purpose, horizon), content_type="application/x-ndjson")
        response["X-Next-Cursor"] = horizon.encode()
        response["Cache-Control"] = "no-store"
        patch_vary_headers(response, ["Accept-Encoding"])
        return response


def _export_lines(purpose: Purpose, horizon: Cursor):
    count = 0
    with transaction.atomic():  # objector_lines streams only inside a transaction
        for lines in objector_lines(purpose_id=purpose.pk, purpose_slug=purpose.slug):
            count += len(lines)
            lines.append("")
            yield "\n".join(lines)
    yield json.dumps({"next_cursor": horizon.encode(), "count": count}, separators=(",", ":")) + "\n"


class SubjectView(ApiView):
    @extend_schema(
        operation_id="objections_subject",
        summary=str(_("One subject's current answer and history")),
        description=str(
            _(
                "For an id that fits in one path segment. An id with a slash, or one spelt like "
                "another endpoint here (changes, check, export, subject), cannot be read this way: "
                "GET /api/v1/objections/subject?subject_id=... reads every id."
            )
        ),
        parameters=[PURPOSE_PARAM],
        responses={200: SubjectOutputSerializer, 404: ERROR_RESPONSE, **COMMON_ERRORS},
    )
    def get(self, request, subject_id: str):
        return _subject_answer(request, subject_id)


class SubjectLookupView(ApiView):
    @extend_schema(
        operation_id="objections_subject_lookup",
        summary=str(_("One subject's current answer and history, for any subject id")),
        description=str(
            _(
                "The answer of /api/v1/objections/{subject_id}, with the id in the query string "
                "(percent-encoded): every id that POST /api/v1/objections accepts can be read here."
            )
        ),
        parameters=[
            OpenApiParameter(
                "subject_id",
                OpenApiTypes.STR,
                required=True,
                description=str(_("The subject id, exactly as it was recorded.")),
            ),
            PURPOSE_PARAM,
        ],
        responses={200: SubjectOutputSerializer, **COMMON_ERRORS},
    )
    def get(self, request):
        given = request.query_params.getlist("subject_id")
        if len(given) != 1:  # left out, or given twice (which one would a proxy have checked?)
            raise BadRequest(subject_id_message(), code="bad_subject_id")
        return _subject_answer(request, given[0])


def _subject_answer(request, subject_id: str) -> JsonResponse:
    if not subject_id_valid(subject_id):
        raise BadRequest(subject_id_message(), code="bad_subject_id")
    purpose = _purpose(request.query_params.get("purpose"))
    state = objection_state_get(subject_id=subject_id, purpose=purpose.slug)
    history = objection_history(subject_id=subject_id, purpose=purpose.slug)
    objected = bool(state and state.objected)
    return JsonResponse(
        {
            "subject_id": subject_id,
            "purpose": purpose.slug,
            "objected": objected,
            "received_at": timestamp_or_none(state.received_at) if objected else None,
            "effective_at": timestamp_or_none(state.effective_at) if objected else None,
            "history": [
                {
                    "id": str(event.uuid),
                    "action": event.action,
                    "source": event.source,
                    "received_at": timestamp_or_none(event.received_at),
                    "effective_at": timestamp_or_none(event.effective_at),
                }
                for event in history
            ],
        }
    )


class RecordObjectionView(ApiView):
    required_scope = ApiScope.OBJECTIONS_WRITE

    @extend_schema(
        operation_id="objections_record",
        summary=str(_("Record an objection on a person's behalf")),
        description=str(
            _(
                "For a tap in the app, a forwarded Global Privacy Control signal or an agent. "
                "Idempotent: a repeat with the same Idempotency-Key, or for a person who "
                "already objects, records nothing and returns the original receipt (200). "
                "A key is the API key's own, per purpose; sent again with a body that differs "
                "from its first request in any field, it is refused (422, idempotency_key_reused)."
            )
        ),
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description=str(_("Any unique text up to 150 characters, chosen by the client.")),
            )
        ],
        request=ObjectionInputSerializer,
        responses={
            201: ReceiptSerializer,
            200: ReceiptSerializer,
            411: ERROR_RESPONSE,
            413: ERROR_RESPONSE,
            415: ERROR_RESPONSE,
            422: ERROR_RESPONSE,
            **COMMON_ERRORS,
        },
    )
    def post(self, request):
        _check_body_size(request)
        data = ObjectionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        purpose = _purpose(values.get("purpose"))
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
            raise BadRequest(
                _("An Idempotency-Key is printable text of at most {max} characters.").format(max=IDEMPOTENCY_KEY_MAX),
                code="bad_idempotency_key",
            )
        try:
            receipt = objection_record(
                subject_id=values["subject_id"],
                purpose=purpose.slug,
                source=values["source"],
                received_at=values.get("received_at"),
                reason=values.get("reason", ""),
                # Keys are the client's own: two clients may pick the same text.
                idempotency_key=f"api:{request.auth.prefix}:{key}" if key else None,
            )
        except IdempotencyKeyReused as exc:
            raise Unprocessable(str(exc), code="idempotency_key_reused") from None
        except LedgerError as exc:
            raise BadRequest(str(exc)) from None
        return JsonResponse(
            {
                "receipt": receipt.receipt,
                "subject_id": receipt.subject_id,
                "purpose": receipt.purpose,
                "objected": receipt.objected,
                "received_at": timestamp_or_none(receipt.received_at),
                "effective_at": timestamp_or_none(receipt.effective_at),
                "created": receipt.created,
            },
            status=201 if receipt.created else 200,
        )
