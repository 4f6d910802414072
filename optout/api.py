"""The objection API, v1 (DESIGN.md, "The objection API (v1)").

One view per operation: parse, call one selector or service, answer. Hot paths (the
feed, the bulk check, the export) write their JSON directly instead of going through
serializers: a page of 10,000 events must not cost 10,000 serializer calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import (
    Http404,
    HttpResponse,
    HttpResponseNotModified,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.decorators import method_decorator
from django.utils.http import parse_etags
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.gzip import gzip_page
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from optout.authentication import ApiKeyAuthentication
from optout.ledger import EARLIEST_RECEIVED_AT, format_timestamp
from optout.models import ApiScope, Purpose, Source
from optout.permissions import HasScope
from optout.selectors import (
    BadCursor,
    Cursor,
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
SUBJECT_ID_MAX = 128
IDEMPOTENCY_KEY_MAX = 150
# Sources a platform may report; imports and staff entries have their own flows.
API_SOURCES = [Source.IN_APP, Source.GPC, Source.API, Source.EMAIL_LINK, Source.WEB_FORM]


# --- Errors --------------------------------------------------------------------------------


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = _("The request is too large.")
    default_code = "too_large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = _("The request conflicts with an earlier one.")
    default_code = "conflict"


class BadRequest(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = _("The request is not valid.")
    default_code = "bad_request"


def error_body(code: str, message: str, fields: object = None) -> dict:
    error: dict = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def exception_handler(exc, context):
    """Every API error, whatever raised it, as {"error": {"code", "message"[, "fields"]}}."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # Django's own cap, met while DRF reads the body
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = PayloadTooLarge(_("The body may have at most {limit} bytes.").format(limit=limit))
    if not isinstance(exc, exceptions.APIException):
        logger.exception("API request failed", exc_info=exc)
        return Response(
            error_body("server_error", str(_("Something went wrong on our side. Try again later."))),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    if isinstance(exc, exceptions.ValidationError):
        body = error_body("invalid", str(_("The request is not valid: see the fields.")), exc.detail)
    else:
        code = getattr(exc.detail, "code", None) or exc.default_code
        body = error_body(str(code), str(exc.detail))
    return Response(body, status=exc.status_code, headers=headers)


@csrf_exempt  # no session, no form: a POST to a wrong path must get this JSON 404 too
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error shape, not an HTML page."""
    return JsonResponse(error_body("not_found", str(_("There is no such API endpoint."))), status=404)


# --- Schema pieces -------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    error = inline_serializer(
        "ErrorDetail",
        {
            "code": serializers.CharField(help_text=_("Machine-readable error code.")),
            "message": serializers.CharField(help_text=_("What went wrong, for a person.")),
            "fields": serializers.DictField(required=False, help_text=_("Per-field problems.")),
        },
    )


_ERROR = OpenApiResponse(ErrorSerializer)
_RATE_LIMITED = OpenApiResponse(
    ErrorSerializer,
    description=str(_("Too many requests for this key; retry after the given seconds.")),
)
COMMON_ERRORS = {400: _ERROR, 401: _ERROR, 403: _ERROR, 429: _RATE_LIMITED}
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


class SubjectIdField(serializers.CharField):
    """One subject id exactly as sent: a JSON string (a number is not turned into one, nor
    is the text trimmed), printable, as the imports and the bulk check take them."""

    def __init__(self, **kwargs):
        super().__init__(max_length=SUBJECT_ID_MAX, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str) or not data.isprintable():  # lone surrogates are not printable
            raise serializers.ValidationError(
                _("A subject id is a string of 1 to {max} printable characters.").format(max=SUBJECT_ID_MAX)
            )
        return super().to_internal_value(data)


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


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, with one message of ours for any body that is not JSON: DRF's
    names Python internals, and a deeply nested body raised RecursionError (a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except (exceptions.ParseError, RecursionError):
            raise exceptions.ParseError(_("The body is not valid JSON.")) from None


class ApiView(APIView):
    authentication_classes = (ApiKeyAuthentication,)
    permission_classes = (HasScope,)
    throttle_classes = (ApiClientRateThrottle,)
    parser_classes = (StrictJSONParser,)
    required_scope: str = ApiScope.OBJECTIONS_READ

    def get_exception_handler(self):
        return exception_handler


def _json(text: str | bytes, *, status_code: int = 200, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(text, status=status_code, content_type="application/json", headers=headers)


def _ts(value) -> str | None:
    return format_timestamp(value) if value is not None else None


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
        return _json(body, headers={**headers, "Cache-Control": "no-cache"})


class CheckView(ApiView):
    @extend_schema(
        operation_id="objections_check",
        summary=str(_("Whether each of up to 10,000 subjects objects")),
        request=CheckInputSerializer,
        responses={
            200: CheckOutputSerializer,
            413: _ERROR,
            415: _ERROR,
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
        return _json(
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
        parameters=[PURPOSE_PARAM],
        responses={200: SubjectOutputSerializer, 404: _ERROR, **COMMON_ERRORS},
    )
    def get(self, request, subject_id: str):
        if len(subject_id) > SUBJECT_ID_MAX or "\x00" in subject_id:
            raise BadRequest(
                _("A subject id is a string of 1 to {max} characters.").format(max=SUBJECT_ID_MAX),
                code="bad_subject_id",
            )
        purpose = _purpose(request.query_params.get("purpose"))
        state = objection_state_get(subject_id=subject_id, purpose=purpose.slug)
        history = objection_history(subject_id=subject_id, purpose=purpose.slug)
        objected = bool(state and state.objected)
        return JsonResponse(
            {
                "subject_id": subject_id,
                "purpose": purpose.slug,
                "objected": objected,
                "received_at": _ts(state.received_at) if objected else None,
                "effective_at": _ts(state.effective_at) if objected else None,
                "history": [
                    {
                        "id": str(event.uuid),
                        "action": event.action,
                        "source": event.source,
                        "received_at": _ts(event.received_at),
                        "effective_at": _ts(event.effective_at),
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
                "already objects, records nothing and returns the original receipt (200)."
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
            409: _ERROR,
            413: _ERROR,
            415: _ERROR,
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
            raise Conflict(str(exc), code="idempotency_key_reused") from None
        except LedgerError as exc:
            raise BadRequest(str(exc)) from None
        return JsonResponse(
            {
                "receipt": receipt.receipt,
                "subject_id": receipt.subject_id,
                "purpose": receipt.purpose,
                "objected": receipt.objected,
                "received_at": _ts(receipt.received_at),
                "effective_at": _ts(receipt.effective_at),
                "created": receipt.created,
            },
            status=201 if receipt.created else 200,
        )
