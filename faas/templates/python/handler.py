"""A faas function. Contract: docs/handlers.md."""

from faas_runtime import Request


def handle(request: Request) -> dict[str, object]:
    name = request.query.get("name", ["world"])[0]
    return {"hello": name, "method": request.method, "path": request.path}
