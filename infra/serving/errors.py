"""Errors answered as OpenAI-style JSON, and the exception handlers that make every error look that way."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# OpenAI parameters this runtime cannot honour, with what they would need (a 400 names them).
UNSUPPORTED = {
    "functions": "function calling (send tools)", "function_call": "function calling (send tool_choice)",
    "audio": "audio output", "modalities": "audio output",
    "prediction": "predicted outputs", "reasoning_effort": "reasoning models", "verbosity": "reasoning models",
    "web_search_options": "web search", "service_tier": "service tiers", "suffix": "insertion (suffix)",
    "logit_bias": "logit bias", "frequency_penalty": "frequency penalty", "presence_penalty": "presence penalty",
    "best_of": "best-of sampling", "echo": "echoing the prompt", "name": "participant names",
}


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body(), self.status, headers=self.headers)


class ClientGone(ApiError):
    """The client disconnected before its answer was ready (counted as 499, nginx's "client closed request")."""

    def __init__(self) -> None:
        super().__init__(499, "client closed the request")


def install_handlers(app: FastAPI) -> None:
    """Answer API errors, validation errors, HTTP errors (404, 405) and crashes in the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "not_found_error", 405: "invalid_request_error"}
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return ApiError(exc.status_code, message, kinds.get(exc.status_code, "invalid_request_error"),
                        headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()


def validation_error(errors: list[Any]) -> ApiError:
    """A 400 naming every invalid or unsupported parameter."""
    parts, params = [], []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # drop pydantic's union-branch labels ("str", "list[TextPart]", "constrained-str"): no field has such names
        loc = [p for p in loc if not ("[" in p or "-" in p or p in ("str", "int", "float", "bool", "list", "dict"))]
        where = ".".join(loc)
        params.append(where)
        if err.get("type") == "json_invalid":
            parts.append(f"invalid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
        elif not where and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            parts.append("the request body must be a JSON object (Content-Type: application/json)")
        elif err.get("type") == "extra_forbidden":
            feature = UNSUPPORTED.get(loc[-1] if loc else "")
            parts.append(f"{where}: not supported by this runtime ({feature})" if feature
                         else f"{where}: unsupported parameter")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
    return ApiError(400, "; ".join(dict.fromkeys(parts)) or "invalid request", param=next(filter(None, params), None))
