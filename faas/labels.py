"""The label schema: the only state the platform keeps.

A function's container carries its whole spec in `faas.*` labels and its
routing in `traefik.*` labels. This module is the one place that knows their
names; `spec_labels` and `spec_from_labels` round-trip a FunctionSpec.

    faas.namespace       platform instance the container belongs to
    faas.function        function name
    faas.schema          label schema version
    faas.spec.<field>    one label per spec field; strings raw, the rest JSON
                         (faas.spec.secrets: the NAMES of the secrets it reads,
                         never a value; see faas/secretstore.py)

On a Swarm, a function's Docker secrets carry faas.namespace and
`faas.secret` (the name of the secret whose value they hold).
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from .spec import FunctionSpec

SCHEMA_VERSION = "1"
NAMESPACE = "faas.namespace"
FUNCTION = "faas.function"
# On a Docker secret (Swarm): the name of the faas secret whose value it holds.
SECRET = "faas.secret"  # noqa: S105 - a label key, not a value
SCHEMA = "faas.schema"
SPEC_PREFIX = "faas.spec."
ENTRYPOINT = "web"
RESERVED_PREFIXES = ("faas.", "traefik.", "com.docker.")
# On images: what built one (`build`); inert, so allowed on function images with
# the other build metadata below.
IMAGE = "faas.image"
IMAGE_LABELS_ALLOWED = frozenset({IMAGE, "faas.source", "faas.test"})
# On the Swarm stats agents' service and token secret (faas.agent): their namespace.
# Not faas.namespace, which marks functions (and routes them in Traefik).
AGENT = "faas.agent"
# On that service: a digest of its spec, to tell an outdated one.
AGENT_SPEC = "faas.agent.spec"


def function_path(name: str) -> str:
    return f"/function/{name}"


def function_rule(name: str) -> str:
    """Exact path or a sub-path, so /function/hello never catches /function/hello2."""
    path = function_path(name)
    return f"Path(`{path}`) || PathPrefix(`{path}/`)"


def service_name(name: str, provider: str = "docker") -> str:
    """The function's service as Traefik names it in its API and metrics; `provider`
    is Traefik's that reads the labels: `docker`, or `swarm` (FAAS_PROVIDER)."""
    return f"{router_name(name)}@{provider}"


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


def read_spec(labels: dict[str, str]) -> tuple[FunctionSpec, str]:
    """The spec in a container's labels, and "" ; or, when they do not validate
    (hand-made, or left by another version), a stand-in naming the function and
    why. One such container must not break listings or the loops that read them."""
    try:
        return spec_from_labels(labels), ""
    except (ValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
        problem = str(exc).splitlines()
        reason = f"labels do not validate: {problem[-1].strip() if problem else exc}"
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            reason = f"labels do not validate: {where}: {first['msg']}"
        stand_in = FunctionSpec.model_construct(
            name=labels.get(FUNCTION, ""), image=labels.get(SPEC_PREFIX + "image", "")
        )
        return stand_in, reason


# Headers that carry an invoke key; removed before a request reaches a function.
KEY_HEADERS = ("Authorization", "X-Faas-Key")
# The middleware (a local plugin, traefik/plugins-local/src/faas/keys) that
# checks invoke keys in Traefik, asking the gateway only about the others.
KEYS = "keys@file"


def limit_labels(spec: FunctionSpec) -> tuple[list[str], dict[str, str]]:
    """Middlewares (names, labels) for the spec's abuse limits; 0 or unset: none."""
    router = router_name(spec.name)
    mw = f"traefik.http.middlewares.{router}"
    lim = spec.limits
    names: list[str] = []
    out: dict[str, str] = {}
    if lim.rate_average:
        names.append(f"{router}-rate")
        out[f"{mw}-rate.ratelimit.average"] = str(lim.rate_average)
        out[f"{mw}-rate.ratelimit.burst"] = str(lim.rate_burst or lim.rate_average)
    if lim.max_in_flight:
        names.append(f"{router}-inflight")
        out[f"{mw}-inflight.inflightreq.amount"] = str(lim.max_in_flight)
    return names, out


def body_limit_labels(spec: FunctionSpec) -> tuple[list[str], dict[str, str]]:
    if not spec.limits.max_body_bytes:
        return [], {}
    router = router_name(spec.name)
    key = f"traefik.http.middlewares.{router}-body.buffering.maxrequestbodybytes"
    return [f"{router}-body"], {key: str(spec.limits.max_body_bytes)}


def auth_labels(spec: FunctionSpec) -> list[str]:
    """The key check for `key` functions: the local plugin faas/keys, declared
    once by the gateway (faas/traefik.py, publish_keys), which also drops the
    key headers."""
    return [KEYS] if spec.auth == "key" else []


def traefik_labels(spec: FunctionSpec, network: str) -> dict[str, str]:
    """Route /function/<name>[/...] to the container, with the prefix stripped.

    Names are validated against ^[a-z][a-z0-9-]*$ before they get here, so
    nothing in the rule comes from user input unescaped. Middlewares run in
    order: abuse limits, the key check, body size, retry, prefix strip. The
    web entrypoint's own middleware (the callid plugin) comes before them all:
    the X-Call-Id, and 502 rather than 504 for a container Traefik could not
    connect to.
    """
    router = router_name(spec.name)
    path = function_path(spec.name)
    limits, limit_out = limit_labels(spec)
    auth = auth_labels(spec)
    body, body_out = body_limit_labels(spec)
    chain = [*limits, *auth, *body, f"{router}-retry", f"{router}-strip"]
    return {
        **limit_out,
        **body_out,
        "traefik.enable": "true",
        "traefik.docker.network": network,
        f"traefik.http.routers.{router}.rule": function_rule(spec.name),
        f"traefik.http.routers.{router}.entrypoints": ENTRYPOINT,
        f"traefik.http.routers.{router}.middlewares": ",".join(chain),
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
    """Every label a function container gets; the platform's win over the user's."""
    return {
        **spec.labels,
        NAMESPACE: namespace,
        FUNCTION: spec.name,
        SCHEMA: SCHEMA_VERSION,
        **spec_labels(spec),
        **traefik_labels(spec, network),
    }


def service_labels(spec: FunctionSpec, namespace: str, network: str) -> dict[str, str]:
    """Every label a function's Swarm service gets: the container's, with the
    network named for Traefik's Swarm provider instead of its Docker one."""
    out = container_labels(spec, namespace, network)
    out["traefik.swarm.network"] = out.pop("traefik.docker.network")
    # No passive health check for the tasks of a dead node (listed until the
    # manager notices): Traefik's counts a 5xx the function answered as a failed
    # attempt, and one 503 took a function's only replica out for 10 s.
    return out
