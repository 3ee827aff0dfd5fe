"""The platform's policy, as pure functions: defaults and allow-lists.

Applied once, above every provider: `effective` turns what a user asked for
into the spec that runs (and is recorded in the labels as is, so `describe`
shows the limits in force). The engine only answers what it alone knows
(`EngineInfo`: which runtimes it has).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import labels
from .config import Settings
from .errors import InvalidSpec
from .provider import EngineInfo
from .spec import FunctionSpec, Limits, parse_spec


def effective(spec: FunctionSpec, settings: Settings, engine: EngineInfo) -> FunctionSpec:
    """`spec` with the platform's defaults filled in; InvalidSpec if it is not allowed."""
    runtime = spec.runtime or settings.default_runtime
    _check_runtime(runtime, settings, engine)
    if spec.gpus is not None and "nvidia" not in engine.runtimes:
        raise InvalidSpec(
            "gpus", "this Docker engine has no GPU support (install the NVIDIA container "
            "toolkit and register its runtime); see docs/runtimes.md",
        )  # fmt: skip
    refused = sorted(set(spec.cap_add) - settings.cap_add_allowlist)
    if refused:
        caps = ", ".join(sorted(settings.cap_add_allowlist)) or "none"
        raise InvalidSpec(
            "cap_add", f"{', '.join(refused)} not allowed here (FAAS_ALLOWED_CAP_ADD: {caps})"
        )
    spec = openfaas_scaling(spec)
    r = spec.resources
    resources = r.model_copy(
        update={
            "memory": r.memory or settings.default_memory,
            "cpus": r.cpus or settings.default_cpus,
            "pids": r.pids or settings.default_pids,
        }
    )
    return spec.model_copy(
        update={"runtime": runtime, "resources": resources, "limits": limits(spec, settings)}
    )


def _check_runtime(runtime: str | None, settings: Settings, engine: EngineInfo) -> None:
    if runtime is not None and runtime not in engine.runtimes:
        raise InvalidSpec(
            "runtime", f"{runtime!r} is not a runtime of this engine; available: "
            + ", ".join(sorted(engine.runtimes)),
        )  # fmt: skip
    allowed = settings.runtime_allowlist
    if allowed is not None and (runtime or engine.default_runtime) not in allowed:
        raise InvalidSpec(
            "runtime", f"{runtime!r} is not allowed here; allowed: {', '.join(sorted(allowed))}"
        )


def limits(spec: FunctionSpec, settings: Settings) -> Limits:
    """The function's abuse limits: its own, else the platform's (0 switches one off)."""
    s, lim = settings, spec.limits
    return Limits(
        rate_average=s.rate_average if lim.rate_average is None else lim.rate_average,
        rate_burst=lim.rate_burst or s.rate_burst,
        max_in_flight=s.max_in_flight if lim.max_in_flight is None else lim.max_in_flight,
        max_body_bytes=s.max_body_bytes if lim.max_body_bytes is None else lim.max_body_bytes,
    )


def check_image_labels(image: str, image_labels: dict[str, str]) -> None:
    """Docker copies an image's labels onto its containers: an image must not
    bring routes (traefik.*) or platform state (faas.*) of its own."""
    for key in sorted(image_labels):
        low = key.lower()
        if low.startswith("traefik.") or (
            low.startswith("faas.") and low not in labels.IMAGE_LABELS_ALLOWED
        ):
            raise InvalidSpec(
                "image", f"{image!r} carries the label {key!r}; images may not set "
                "traefik.* or faas.* labels (Docker would copy them onto the container)",
            )  # fmt: skip


def check_replicas(spec: FunctionSpec, replicas: int) -> None:
    """A count `faas scale` may set: 0 (stop) or within the function's bounds,
    which the autoscaler would otherwise undo."""
    floor, ceiling = max(spec.min_scale, 1), spec.max_scale
    if replicas == 0 or floor <= replicas <= ceiling:
        return
    if spec.min_scale <= 1:
        allowed = f"n from 0 to {ceiling} ({spec.name}'s max_scale)"
    else:
        allowed = f"0 or n from {floor} to {ceiling} ({spec.name}'s min_scale and max_scale)"
    raise InvalidSpec("replicas", f"send {allowed}, not {replicas}")


def fits(limit: int, used: int, total: int) -> bool:
    """Whether an instance that may use `limit` bytes fits beside instances that may
    use `used` of a host's `total` (0: the engine did not say; then it fits)."""
    return total <= 0 or used + limit <= total


# OpenFaaS' scaling labels (docs.openfaas.com, autoscaling), honoured when set.
OPENFAAS_SCALE = "com.openfaas.scale."
_GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def openfaas_scaling(spec: FunctionSpec) -> FunctionSpec:
    """`spec` with OpenFaaS' scaling labels applied: `.min` and `.max` replicas,
    `.zero` (true: may scale to zero), `.zero-duration` (a Go duration: the idle
    timeout). The labels win over the spec's own fields."""
    given = {
        key.removeprefix(OPENFAAS_SCALE): value
        for key, value in spec.labels.items()
        if key.startswith(OPENFAAS_SCALE)
    }
    if not given:
        return spec
    update: dict[str, object] = {}
    for key, field in (("min", "min_scale"), ("max", "max_scale")):
        if key in given:
            update[field] = _label_int(key, given[key])
    zero = given.get("zero", "").lower()
    if zero not in ("", "true", "false"):
        raise InvalidSpec(f"labels.{OPENFAAS_SCALE}zero", "must be true or false")
    if zero == "true":
        update["min_scale"] = 0
    elif zero == "false":
        update["min_scale"] = max(int(str(update.get("min_scale", spec.min_scale))), 1)
    if "zero-duration" in given:
        update["idle_timeout"] = _go_seconds(given["zero-duration"])
    return parse_spec({**spec.model_dump(), **update})


def _label_int(key: str, raw: str) -> int:
    if not raw.isdigit():
        raise InvalidSpec(f"labels.{OPENFAAS_SCALE}{key}", f"{raw!r} is not a whole number")
    return int(raw)


def _go_seconds(raw: str) -> int:
    match = _GO_DURATION.fullmatch(raw)
    if not raw or match is None:
        raise InvalidSpec(
            f"labels.{OPENFAAS_SCALE}zero-duration", f"{raw!r} is not a duration like 15m or 1h30m"
        )
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def idle_tiers(spec: FunctionSpec, settings: Settings) -> tuple[int, int]:
    """Seconds without traffic before `spec` is paused, and before it is stopped
    (0: never). A pause only where it comes before the stop, or there is no stop;
    FAAS_MAX_PAUSED=0 turns the paused tier off everywhere, as Swarm does (it has no
    pause)."""
    pause = settings.pause_timeout if spec.pause_timeout is None else spec.pause_timeout
    stop = spec.idle_timeout
    if not settings.max_paused or settings.provider == "swarm" or (stop and pause >= stop):
        pause = 0
    return pause, stop


def evictions(paused: Mapping[str, float], bound: int) -> list[str]:
    """The paused functions to stop so that at most `bound` stay paused: the ones
    paused the longest (`paused`: name -> when it was paused), oldest first. A
    paused function has served nothing since it was paused, so this is the least
    recently used."""
    oldest_first = sorted(paused, key=lambda name: (paused[name], name))
    return oldest_first[: max(len(oldest_first) - bound, 0)]
