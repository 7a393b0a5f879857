"""Every failure leaves the server as OpenAI's error envelope, never as a traceback:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value"}}

Handlers raise `ApiError` (or one of the builders below); `install(app)` turns it, request
validation failures, unknown routes and any unexpected exception into that envelope with
the right status: 400 bad request, 401 bad key, 403 admin routes off, 404 unknown model,
409 conflict, 413 body too large, 429 queue full, 503 shutting down, 504 timed out, 500 bug.
The OpenAI client reads `message`, `type`, `param` and `code` from it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

log = logging.getLogger("tuneforge.serve")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error", 499: "client_closed", 500: "server_error", 503: "service_unavailable",
         504: "timeout_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.status, self.message, self.param, self.code)


def envelope(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error" if status >= 500
                                                             else "invalid_request_error"),
                      "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def bad_key() -> ApiError:
    return ApiError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                    code="invalid_api_key")


def model_not_found(name: str) -> ApiError:
    # the same answer for a model that does not exist and one the key may not use, as OpenAI does:
    # a limited key learns nothing about the other models
    return ApiError(404, f"The model '{name}' does not exist or you do not have access to it.", "model",
                    "model_not_found")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large: this server accepts at most {limit} bytes.",
                    code="request_too_large")


def queue_full() -> ApiError:
    return ApiError(429, "The server is busy (its request queue is full); retry shortly.", code="queue_full",
                    headers={"retry-after": "1"})


def shutting_down() -> ApiError:
    return ApiError(503, "The server is shutting down; retry against another instance or later.",
                    code="shutting_down", headers={"retry-after": "5"})


def timed_out(seconds: float) -> ApiError:
    return ApiError(504, f"The request did not finish within {seconds:g} s and was abandoned.",
                    code="request_timeout")


# TuneforgeError codes (the engine's, the template module's) that are not a plain 400
PROBLEM_STATUS = {"model_not_found": 404}


def from_problems(exc) -> ApiError:
    """A TuneforgeError raised about this request's input, as an API error."""
    code = exc.problems[0].code if exc.problems else None
    message = "; ".join(prob.message for prob in exc.problems)
    return ApiError(PROBLEM_STATUS.get(code, 400), message, "model" if code == "model_not_found" else None, code)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready; nobody reads the response."""


_TYPE_WORDS = {"int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
               "float_parsing": "a number", "string_type": "a string", "bool_type": "a boolean",
               "bool_parsing": "a boolean", "list_type": "an array", "dict_type": "an object",
               "model_type": "an object", "model_attributes_type": "an object", "int_from_float": "an integer"}


def param_path(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', OpenAI's way of naming a param."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "union[", "list[", "str", "dict[", "json-or-python")):
            out += ("." if out else "") + str(part)
    return out


def _got(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def from_validation(exc: ValidationError) -> ApiError:
    """All problems in one 400, named as OpenAI names them; `param` is the first one's."""
    messages: list[str] = []
    params: list[str] = []
    code = None
    for err in exc.errors():
        kind, param = err["type"], param_path(tuple(err["loc"]))
        if kind == "json_invalid":
            msg, kind_code = ("We could not parse the JSON body of your request: "
                              f"{err.get('ctx', {}).get('error', 'invalid JSON')}. Send valid JSON."), "invalid_json"
        elif kind == "extra_forbidden":
            msg, kind_code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        elif kind == "missing":
            msg, kind_code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        elif kind in _TYPE_WORDS and not param:
            msg, kind_code = f"The request body must be a JSON object, not {_got(err['input'])}.", "invalid_type"
        elif kind in _TYPE_WORDS:
            msg = f"Invalid type for '{param}': expected {_TYPE_WORDS[kind]}, but got {_got(err['input'])} instead."
            kind_code = "invalid_type"
        elif kind == "unsupported_parameter":
            msg, kind_code = err["msg"], kind
        else:
            detail = err["msg"].removeprefix("Value error, ")
            msg = f"Invalid value for '{param}': {detail}." if param else f"{detail}."
            kind_code = "invalid_value"
        if msg not in messages:
            messages.append(msg)
            params.append(param)
            code = code or kind_code
    return ApiError(400, " ".join(messages), params[0] if params and params[0] else None, code)


def install(app, on_error=None) -> None:
    """Register the handlers that turn every failure into the envelope. `on_error(request, error)`
    is told about each (for the request log and metrics)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from tuneforge.errors import TuneforgeError

    def reply(request, error: ApiError):
        if on_error is not None:
            on_error(request, error)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def api_error(request, exc: ApiError):
        return reply(request, exc)

    async def validation(request, exc: RequestValidationError):
        # bodies are parsed by `read_json` (from_validation); this is for path and query parameters
        return reply(request, bad_request(_fastapi_message(exc), _fastapi_param(exc)))

    async def http_error(request, exc: HTTPException):
        words = {404: f"Unknown request URL: {request.method} {request.url.path}.",
                 405: f"Method {request.method} is not allowed on {request.url.path}."}
        return reply(request, ApiError(exc.status_code, words.get(exc.status_code, str(exc.detail)),
                                       code="unknown_url" if exc.status_code == 404 else None))

    async def tuneforge_error(request, exc):
        # a problem the engine or template module found with this request's input
        return reply(request, from_problems(exc))

    async def gone(request, exc: ClientGone):
        if on_error is not None:
            on_error(request, ApiError(499, "client closed the connection", code="client_closed"))
        return Response(status_code=499)  # never delivered: the connection is gone

    async def unexpected(request, exc: Exception):
        # the traceback goes to the server's log for the operator, never to the client
        log.exception("internal error on %s %s", request.method, request.url.path)
        return reply(request, ApiError(500, "The server had an internal error while processing your request.",
                                       code="internal_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientGone, gone)
    app.add_exception_handler(TuneforgeError, tuneforge_error)
    app.add_exception_handler(Exception, unexpected)


def _fastapi_param(exc) -> str | None:
    errors = exc.errors()
    return param_path(tuple(p for p in errors[0]["loc"] if p not in ("body", "path", "query"))) if errors else None


def _fastapi_message(exc) -> str:
    return " ".join(f"Invalid value for '{param_path(tuple(p for p in e['loc'] if p not in ('body', 'path', 'query')))}'"
                    f": {e['msg']}." for e in exc.errors()) or "Invalid request."
