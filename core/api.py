"""What every Demur API shares: the error shape and its exception handler, the
schema pieces that describe errors, the JSON parser, and the small response helpers.
Both apps' API views build on it (optout.api, campaigns.api); it knows no model."""

from __future__ import annotations

import logging
import math

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from core.timestamps import format_timestamp

logger = logging.getLogger(__name__)

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


class ResyncRequired(exceptions.APIException):
    """The client's copy may hold what this server no longer has: start again (410)."""

    status_code = status.HTTP_410_GONE
    default_detail = _("Start again from a snapshot.")
    default_code = "resync_required"


class Unprocessable(exceptions.APIException):
    """Well-formed, but not something this request may ask (422)."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = _("The request cannot be carried out.")
    default_code = "unprocessable"


class LengthRequired(exceptions.APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = _(
        "Send the body with a Content-Length header; a body sent with Transfer-Encoding (chunked) is not accepted."
    )
    default_code = "length_required"


def refuse_unsized_body(request) -> None:
    """Refuse a write whose body comes with Transfer-Encoding (chunked) instead of a
    Content-Length: Django reads CONTENT_LENGTH bytes of a body, so such a body would be
    read as empty and answered as if nothing had been sent. (A proxy that buffers bodies
    sends a Content-Length and never gets here.)"""
    if request.method not in ("GET", "HEAD", "OPTIONS") and "HTTP_TRANSFER_ENCODING" in request.META:
        raise LengthRequired()


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


class ErrorSerializer(serializers.Serializer):
    error = inline_serializer(
        "ErrorDetail",
        {
            "code": serializers.CharField(help_text=_("Machine-readable error code.")),
            "message": serializers.CharField(help_text=_("What went wrong, for a person.")),
            "fields": serializers.DictField(required=False, help_text=_("Per-field problems.")),
        },
    )


ERROR_RESPONSE = OpenApiResponse(ErrorSerializer)
RATE_LIMITED_RESPONSE = OpenApiResponse(
    ErrorSerializer,
    description=str(_("Too many requests for this key; retry after the given seconds.")),
)
COMMON_ERRORS = {400: ERROR_RESPONSE, 401: ERROR_RESPONSE, 403: ERROR_RESPONSE, 429: RATE_LIMITED_RESPONSE}


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, with one message of ours for any body that is not JSON: DRF's
    names Python internals, and a deeply nested body raised RecursionError (a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except (exceptions.ParseError, RecursionError):
            raise exceptions.ParseError(_("The body is not valid JSON.")) from None


def json_response(text: str | bytes, *, status_code: int = 200, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(text, status=status_code, content_type="application/json", headers=headers)


def timestamp_or_none(value) -> str | None:
    return format_timestamp(value) if value is not None else None
