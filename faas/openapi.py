"""The OpenAPI document of /api/v1, built from the models so it cannot drift."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from . import __version__
from .provider import State
from .spec import FunctionSpec

_ERROR = {"$ref": "#/components/schemas/Error"}
_KEY = {
    "type": "object",
    "required": ["kid", "key", "expires"],
    "properties": {
        "kid": {"type": "string"},
        "key": {"type": "string"},
        "expires": {"type": ["integer", "null"]},
    },
}


def _responses(ok: str, schema: Mapping[str, object] | None, *errors: int) -> dict[str, object]:
    out: dict[str, object] = {
        ok: {"description": "OK"}
        if schema is None
        else {"description": "OK", "content": {"application/json": {"schema": schema}}}
    }
    for code in (401, *errors):
        out[str(code)] = {
            "description": "Error",
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


_SECRET = {
    "type": "object",
    "required": ["name", "used_by"],
    "properties": {
        "name": {"type": "string"},
        "used_by": {"type": "array", "items": {"type": "string"}},
    },
}
_SECRET_VALUE = {
    "value": {"type": "string", "description": "The value, as text (stored as UTF-8)."},
    "raw_value": {
        "type": "string",
        "contentEncoding": "base64",
        "description": "The value as base64 (any bytes); wins over value.",
    },
}


def _secret_body(*required: str) -> dict[str, object]:
    properties = {"name": {"type": "string"}, **_SECRET_VALUE}
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_TAR = {
    "required": True,
    # A tar archive; any type is taken (octet-stream is what clients send).
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
# forwardAuth asks with the method of the request it checks.
AUTH_METHODS = ("get", "post", "put", "patch", "delete", "options")


@cache
def document() -> dict[str, object]:
    spec_ref = {"$ref": "#/components/schemas/FunctionSpec"}
    fn_ref = {"$ref": "#/components/schemas/Function"}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    body = {"required": True, "content": {"application/json": {"schema": spec_ref}}}
    spec_schema = FunctionSpec.model_json_schema()
    function_schema = {
        "allOf": [
            spec_ref,
            {
                "type": "object",
                "properties": {
                    "state": {"enum": [s.value for s in State]},
                    "reason": {"type": "string"},
                    "container": {"type": "string"},
                    "created": {"type": "string", "format": "date-time"},
                    "address": {"type": ["string", "null"]},
                },
            },
        ]
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "faas management API", "version": __version__},
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "FunctionSpec": spec_schema,
                "Function": function_schema,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "detail": {}},
                },
            },
        },
        "security": [{"admin": []}],
        "paths": {
            "/api/v1/healthz": {
                "get": {"security": [], "responses": {"200": {"description": "OK"}}}
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "responses": _responses("200", {})}
            },
            "/api/v1/functions": {
                "get": {"responses": _responses("200", {"type": "array", "items": fn_ref})},
                "post": {
                    "requestBody": body,
                    "responses": _responses("201", fn_ref, 409, 422, 502),
                },
            },
            "/api/v1/functions/{name}": {
                "parameters": [name],
                "get": {"responses": _responses("200", fn_ref, 404)},
                "put": {"requestBody": body, "responses": _responses("200", fn_ref, 422, 502)},
                "delete": {"responses": _responses("204", None, 404)},
            },
            "/api/v1/functions/{name}/keys": {
                "parameters": [name],
                "post": {
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "ttl": {"type": ["integer", "null"], "minimum": 1}
                                    },
                                }
                            }
                        },
                    },
                    "responses": _responses("201", _KEY, 404, 422),
                },
            },
            "/api/v1/keys/{kid}": {
                "parameters": [
                    {"name": "kid", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "delete": {"responses": _responses("204", None, 422)},
            },
            "/api/v1/functions/{name}/logs": {
                "parameters": [
                    name,
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "tail", "in": "query", "schema": {"type": "integer"}},
                    {"name": "since", "in": "query", "schema": {"type": "integer"}},
                ],
                "get": {
                    "responses": _responses("200", None, 404),
                },
            },
            "/api/v1/functions/{name}/scale": {
                "parameters": [name],
                "post": {
                    "summary": "Run n replicas now, 0 to max_scale (0 stops the function)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "additionalProperties": False,
                                    "properties": {"replicas": {"type": "integer", "minimum": 0}},
                                }
                            }
                        },
                    },
                    "responses": _responses("200", fn_ref, 404, 422, 503),
                },
            },
            "/api/v1/functions/{name}/build": {
                "parameters": [
                    name,
                    {"name": "template", "in": "query", "schema": {"type": "string"}},
                ],
                "post": {
                    "summary": "Build a tar build context as faas/<name>:<hash> (NDJSON output; "
                    "the last line holds the image or the error)",
                    "requestBody": _TAR,
                    "responses": _responses("200", None, 422),
                },
            },
            "/api/v1/secrets": {
                "get": {
                    "summary": "Secrets by name, with the functions using each (never a value)",
                    "responses": _responses("200", {"type": "array", "items": _SECRET}),
                },
                "post": {
                    "summary": "Create a secret (value or raw_value; up to FAAS_SECRET_MAX_BYTES)",
                    "requestBody": _secret_body("name"),
                    "responses": _responses("201", _SECRET, 409, 413, 422),
                },
            },
            "/api/v1/secrets/{name}": {
                "parameters": [name],
                "get": {"responses": _responses("200", _SECRET, 404, 422)},
                "put": {
                    "summary": "A new value; the functions using it read it at once",
                    "requestBody": _secret_body(),
                    "responses": _responses("200", _SECRET, 404, 413, 422),
                },
                "delete": {
                    "summary": "Remove a secret no function uses (else 409 naming them)",
                    "responses": _responses("204", None, 404, 409, 422),
                },
            },
            "/api/v1/images/pull": {
                "post": {
                    "summary": "Pull an image unless present (NDJSON progress)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "image": {"type": "string"},
                                        "auth": {
                                            "type": "object",
                                            "required": ["username", "password"],
                                            "properties": {
                                                "username": {"type": "string"},
                                                "password": {"type": "string"},
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": _responses("200", None, 422),
                }
            },
            "/api/v1/images/load": {
                "post": {
                    "summary": "Load a docker-save or OCI image-layout archive",
                    "requestBody": _TAR,
                    "responses": _responses("200", {"type": "object"}, 422),
                }
            },
            "/api/v1/auth/{name}": {
                "parameters": [name],
                **{
                    method: {
                        "summary": "Traefik's forwardAuth: may this request invoke the "
                        "function? (an invoke key or the admin token)",
                        "responses": _responses("200", None, 403, 404),
                    }
                    for method in AUTH_METHODS
                },
            },
            "/api/v1/metrics": {
                "get": {
                    "summary": "The gateway's Prometheus metrics (also at /metrics on its port)",
                    "responses": _responses("200", None),
                }
            },
            "/api/v1/stats": {
                "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                "get": {
                    "summary": "Per function: state, invocations, 5xx rate, p50/p99, "
                    "cold starts, memory",
                    "responses": _responses("200", {"type": "array", "items": {}}, 404),
                },
            },
        },
    }
