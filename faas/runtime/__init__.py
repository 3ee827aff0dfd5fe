"""The function runtime: serves a user's `handle(request)` over HTTP with the standard library.

From a checkout it runs as `python3 -m faas.runtime`; function images carry this package
as `faas_runtime` and run `python3 -m faas_runtime`. Handlers import
`from faas_runtime import Request, Response` either way (docs/handlers.md).
"""

from .messages import BadRequest, Headers, Request, Response

__all__ = ["BadRequest", "Headers", "Request", "Response"]
