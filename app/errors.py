"""Domain errors with the spec's stable codes; the API renders them once, in the error envelope."""

from __future__ import annotations

from typing import Any

from app.documents import ErrorDetail, ErrorEnvelope


class ApiError(Exception):
    """An error a client sees: HTTP status, Cycle error code, a title and an optional detail."""

    status = 500
    code = "500.unknown"
    title = "Something went wrong on our side."

    def __init__(self, detail: str | None = None, *, source: str | None = None,
                 title: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.source = source
        self.extra = extra
        if title:
            self.title = title

    def envelope(self) -> dict[str, Any]:
        return ErrorEnvelope(error=ErrorDetail(
            status=self.status, code=self.code, title=self.title, detail=self.detail or None,
            source=self.source or None, extra=self.extra or None), data=None).answer()


def _error(status: int, code: str, title: str) -> type[ApiError]:
    name = "".join(part.title() for part in code.replace(".", "-").split("-")[1:]) + "Error"
    return type(name, (ApiError,), {"status": status, "code": code, "title": title})


InvalidSyntax = _error(400, "400.invalid-syntax", "The request is malformed.")
AuthInvalid = _error(401, "401.auth-invalid", "The API key is missing or invalid.")
WrongHub = _error(403, "403.wrong-hub", "The API key does not belong to the hub requested.")
PermissionDenied = _error(403, "403.permissions", "The API key lacks a required capability.")
Expired = _error(403, "403.expired", "The token has expired.")
InvalidState = _error(403, "403.invalid-state",
                      "The resource is not in a state that allows this action.")
ImageNotFound = _error(404, "404.image", "The image was not found.")
SourceNotFound = _error(404, "404.image.source", "The image source was not found.")
BuildLogNotFound = _error(404, "404.image.build-log", "The image has no build log.")
JobNotFound = _error(404, "404.job", "The job was not found.")
UriNotFound = _error(404, "404.uri", "No such endpoint.")
MethodNotAllowed = _error(405, "405.method-not-allowed", "This method is not allowed here.")
PayloadTooLarge = _error(413, "413.too-large", "The request body is too large.")
InvalidContentType = _error(415, "415.invalid-content-type",
                            "The request body must be application/json.")
IdempotencyKeyInUse = _error(409, "409.duplicate-found",
                             "A request with this Idempotency-Key is still being served.")
IdempotencyKeyReused = _error(422, "422.already-exists",
                              "The Idempotency-Key was already used for a different request.")
MissingArgument = _error(422, "422.missing-argument", "A required argument is missing.")
InvalidArgument = _error(422, "422.invalid-argument", "An argument is not valid.")
InvalidInput = _error(422, "422.invalid-input", "The input is not valid.")
MaxExceeded = _error(422, "422.max-exceeded", "A value is larger than allowed.")
DatabaseError = _error(500, "500.database", "The database could not complete the request.")
NotReady = _error(503, "503.not-ready", "A service this request needs is not ready.")
