"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal the server makes goes through :class:`ApiError`; the handlers in
:func:`install` turn validation errors, unknown routes and unexpected exceptions into
the same shape, with a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("mlx_synapse.server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An HTTP refusal with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    def raw(self) -> tuple:
        """``(status, headers, body bytes)`` for pure ASGI middleware."""
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(self.retry_after))).encode()))
        return self.status, headers, json.dumps(self.body()).encode()


async def send_error(send, err: ApiError) -> None:
    status, headers, body = err.raw()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_message(exc: RequestValidationError) -> ApiError:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); "
                             "send a JSON object with Content-Type: application/json.", code="invalid_json")
    field = _field(first.get("loc", ()))
    if field == "body" and first.get("type") in ("model_attributes_type", "dict_type"):
        return ApiError(400, "the request body is not a JSON object; send one with Content-Type: application/json.",
                        code="invalid_json")
    if first.get("type") == "missing":
        return ApiError(422, f"'{field}' is required; add it to the request body.", param=field, code="missing_field")
    got = first.get("input")
    got = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    got = got if len(got) <= 80 else got[:77] + "..."
    msg = first.get("msg", "invalid value").rstrip(".")
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return ApiError(422, f"'{field}' is invalid: {msg}, got {got}{more}; fix it and resend.", param=field,
                    code="invalid_value")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_message(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return ApiError(404, f"no endpoint {request.url.path}; see /docs for the API "
                                 "(/v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings, /v1/memories).",
                            code="not_found").response()
        if exc.status_code == 405:
            return ApiError(405, f"{request.method} is not allowed on {request.url.path}; see /docs for its methods.",
                            code="method_not_allowed").response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return ApiError(500, f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                             "the server log has the details — please report it.", code="internal_error").response()
