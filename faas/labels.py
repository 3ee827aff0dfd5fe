"""The label schema: the only state the platform keeps.

A function's container carries its whole spec in `faas.*` labels and its
routing in `traefik.*` labels. This module is the one place that knows their
names; `spec_labels` and `spec_from_labels` round-trip a FunctionSpec.

    faas.namespace       platform instance the container belongs to
    faas.function        function name
    faas.schema          label schema version
    faas.spec.<field>    one label per spec field; strings raw, the rest JSON
"""

from __future__ import annotations

import json

from .spec import FunctionSpec

SCHEMA_VERSION = "1"
NAMESPACE = "faas.namespace"
FUNCTION = "faas.function"
SCHEMA = "faas.schema"
SPEC_PREFIX = "faas.spec."
ENTRYPOINT = "web"
RESERVED_PREFIXES = ("faas.", "traefik.", "com.docker.")


def function_path(name: str) -> str:
    return f"/function/{name}"


def function_rule(name: str) -> str:
    """Exact path or a sub-path, so /function/hello never catches /function/hello2."""
    path = function_path(name)
    return f"Path(`{path}`) || PathPrefix(`{path}/`)"


def service_name(name: str) -> str:
    """The function's service as Traefik names it in its API and metrics."""
    return f"{router_name(name)}@docker"


def router_name(name: str) -> str:
    return f"fn-{name}"


def _is_str_field(field: str) -> bool:
    return FunctionSpec.model_fields[field].annotation is str


def spec_labels(spec: FunctionSpec) -> dict[str, str]:
    """The faas.* labels that describe `spec` completely."""
    labels = {}
    for field, value in spec.model_dump().items():
        encoded = value if _is_str_field(field) else json.dumps(value, sort_keys=True)
        labels[SPEC_PREFIX + field] = encoded
    return labels


def spec_from_labels(labels: dict[str, str]) -> FunctionSpec:
    """Rebuild the spec from a container's labels (inverse of `spec_labels`)."""
    data: dict[str, object] = {}
    for key, raw in labels.items():
        if not key.startswith(SPEC_PREFIX):
            continue
        field = key.removeprefix(SPEC_PREFIX)
        if field not in FunctionSpec.model_fields:
            continue  # written by a newer version; ignore rather than fail
        data[field] = raw if _is_str_field(field) else json.loads(raw)
    return FunctionSpec.model_validate(data)


def traefik_labels(spec: FunctionSpec, network: str) -> dict[str, str]:
    """Route /function/<name>[/...] to the container, with the prefix stripped.

    Names are validated against ^[a-z][a-z0-9-]*$ before they get here, so
    nothing in the rule comes from user input unescaped.
    """
    router = router_name(spec.name)
    path = function_path(spec.name)
    return {
        "traefik.enable": "true",
        "traefik.docker.network": network,
        f"traefik.http.routers.{router}.rule": function_rule(spec.name),
        f"traefik.http.routers.{router}.entrypoints": ENTRYPOINT,
        f"traefik.http.routers.{router}.middlewares": f"{router}-retry,{router}-strip",
        f"traefik.http.routers.{router}.service": router,
        f"traefik.http.middlewares.{router}-strip.stripprefix.prefixes": path,
        # Traefik routes a container as soon as it runs, before its server
        # listens, and keeps a stopped one until the `die` event is applied:
        # a refused connection is retried on another server instead of 502.
        f"traefik.http.middlewares.{router}-retry.retry.attempts": "3",
        f"traefik.http.middlewares.{router}-retry.retry.initialinterval": "50ms",
        f"traefik.http.services.{router}.loadbalancer.server.port": str(spec.port),
    }


def container_labels(spec: FunctionSpec, namespace: str, network: str) -> dict[str, str]:
    """Every label a function container gets."""
    return {
        NAMESPACE: namespace,
        FUNCTION: spec.name,
        SCHEMA: SCHEMA_VERSION,
        **spec_labels(spec),
        **traefik_labels(spec, network),
    }
