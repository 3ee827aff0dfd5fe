"""The OpenAPI document describes exactly the app's /api/v1 routes (so the fuzz
test, which reads the document, reaches every one of them)."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Route

from faas import openapi
from faas.config import Settings
from faas.gateway import build_app
from faas.keys import Keys

from .fakes import lifecycle


def test_document_paths_and_methods_equal_the_app_routes(tmp_path: Path) -> None:
    app = build_app(lifecycle(), "t" * 32, Keys.from_settings(Settings(state_dir=tmp_path)))
    routed = {
        (route.path.replace(":path}", "}"), method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api/v1/")
        for method in route.methods or ()
        if method != "HEAD"  # Starlette answers HEAD wherever GET is routed
    }
    paths = openapi.document()["paths"]
    assert isinstance(paths, dict)
    documented = {
        (path, method) for path, item in paths.items() for method in item if method != "parameters"
    }
    assert documented == routed
