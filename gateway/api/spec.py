"""Declared endpoints: one decorator validates requests with pydantic and documents them."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Union, get_args, get_origin

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from gateway.api.context import principal
from gateway.auth.tokens import Scope
from gateway.errors import Forbidden, InvalidInput

ERROR_STATUSES = ("401", "403", "404", "409", "413", "422", "429", "503")
MAX_ID = 2**31 - 1  # ids are INTEGER columns: 32-bit on PostgreSQL (SQLite's are 64-bit)
ID = f"int(max={MAX_ID})"  # use as `<{ID}:name>`: a larger id is a 404, never a query error
CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


@dataclass(frozen=True)
class Endpoint:
    """One documented operation of the /api/v1 surface."""

    rule: str
    method: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    scopes: tuple[str, ...]
    raw_body: str | None = None
    operation_id: str = ""
    media: tuple[str, ...] = ()  # other content types the success response may have (text)


@dataclass
class ApiRegistry:
    """Every declared endpoint, in declaration order."""

    endpoints: list[Endpoint] = field(default_factory=list)


REGISTRY = ApiRegistry()


def endpoint(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    scopes: tuple[str, ...] = (),
    raw_body: str | None = None,
    media: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view on `bp`, validate its JSON body and query, document it."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        prefix = bp.url_prefix or ""
        REGISTRY.endpoints.append(
            Endpoint(
                prefix + rule,
                method,
                summary,
                bp.name,
                body,
                query,
                response,
                status,
                scopes,
                raw_body,
                view.__name__,
                media,
            )
        )

        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Response:
            _authorize(scopes)
            _check_text(kwargs, "path")
            if body is not None:
                kwargs["body"] = _parse(body, _json_body())
            if query is not None:
                kwargs["query"] = _parse(query, _query_dict(query))
            result = view(**kwargs)
            return _respond(result, status)

        bp.add_url_rule(rule, view.__name__, wrapper, methods=[method])
        return wrapper

    return decorate


def _authorize(scopes: tuple[str, ...]) -> None:
    """Authenticate before the view opens its session, then require one of the declared scopes.

    The token is looked up in a session of its own; resolving it first means the request never
    holds two transactions at once (on SQLite the second would wait for the first, forever).
    """
    caller = principal()
    if not scopes:
        return
    caller.require_user()
    if not any(Scope(s) in caller.scopes for s in scopes):
        wanted = " or ".join(scopes)
        raise Forbidden(f"the token lacks the scope '{wanted}'", extra={"scope": wanted})


def _json_body() -> Any:
    if not request.is_json:
        raise InvalidInput("the request body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidInput("malformed JSON: the body is not valid UTF-8") from None
    except ValueError as exc:  # JSONDecodeError, and integers past the digit limit
        raise InvalidInput(f"malformed JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise InvalidInput("malformed JSON: nested too deeply") from None
    _check_text(data, "body")
    return data


def _check_text(value: Any, where: str) -> None:
    """Refuse NUL and unpaired surrogates anywhere in the input: no database stores them."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((path, k) for k in item)
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(item))
        elif isinstance(item, str) and not _storable(item):
            raise InvalidInput(
                "text may not contain NUL characters or unpaired surrogates",
                errors=[{"path": path[:200], "message": "invalid character", "type": "string"}],
            )


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _query_dict(model: type[BaseModel]) -> dict[str, Any]:
    unknown = sorted(set(request.args) - set(model.model_fields))
    if unknown:
        raise InvalidInput(
            "unknown query parameters",
            errors=[
                {"path": n[:64], "message": "not a parameter of this operation"} for n in unknown
            ],
        )
    result: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values = request.args.getlist(name)
        if not values:
            continue
        result[name] = values if _is_list(info.annotation) else values[-1]
    _check_text(result, "query")
    return result


def _is_list(annotation: Any) -> bool:
    """Whether a query field takes every value given (`list[...]`, optional or not)."""
    if get_origin(annotation) is list:
        return True
    return get_origin(annotation) in (Union, UnionType) and any(
        _is_list(arg) for arg in get_args(annotation)
    )


def _parse(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {
                "path": ".".join(str(p) for p in err["loc"]) or "(body)",
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidInput("the request is invalid", errors=errors) from None


def _respond(result: Any, status: int) -> Response:
    if isinstance(result, tuple):
        result, status = result
    if isinstance(result, Response):
        return result
    if isinstance(result, BaseModel):
        response = jsonify(result.model_dump(mode="json"))
    else:
        response = jsonify(result)
    response.status_code = status
    return response


def openapi_document(title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every registered endpoint, from the same pydantic models."""
    schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for ep in REGISTRY.endpoints:
        path = CONVERTER.sub(r"{\2}", ep.rule)
        paths.setdefault(path, {})[ep.method.lower()] = _operation(ep, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An Airlock API token (alk_...).",
                }
            },
        },
    }


def _schema_ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(ep: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "operationId": ep.operation_id,
        "tags": [ep.tag],
        "parameters": _parameters(ep, schemas),
        "responses": {},
    }
    if ep.scopes:
        op["security"] = [{"bearer": []}]
        op["description"] = "Requires the scope " + " or ".join(ep.scopes)
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(ep.body, schemas)}},
        }
    elif ep.raw_body:
        op["requestBody"] = {
            "required": True,
            "content": {ep.raw_body: {"schema": {"type": "string", "format": "binary"}}},
        }
    ok: dict[str, Any] = {"description": "Success"}
    if ep.response is not None:
        ok["content"] = {"application/json": {"schema": _schema_ref(ep.response, schemas)}}
    for kind in ep.media:
        ok.setdefault("content", {})[kind] = {"schema": {"type": "string"}}
    op["responses"][str(ep.status)] = ok
    for status in ERROR_STATUSES:
        op["responses"][status] = {
            "description": "Error",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return op


def _parameters(ep: Endpoint, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(conv)}
        for conv, name in CONVERTER.findall(ep.rule)
    ]
    if ep.query is not None:
        schema = ep.query.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "schema": prop,
                }
            )
    return params


def _path_schema(converter: str) -> dict[str, Any]:
    if converter == "int":
        return {"type": "integer", "minimum": 0, "maximum": MAX_ID}
    return {"type": "string", "pattern": "^[^/]+$"}


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
        "reasons": {"type": "array", "items": {"type": "object"}},
    },
}
