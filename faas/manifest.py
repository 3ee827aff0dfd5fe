"""The function manifest, faas.toml: one format for `faas deploy -f` and `faas new`.

    name = "hello"
    image = "repo:tag"  | build = "."  | lang = "python"    # where the code comes from
    port, command, health_path, runtime, gpus               # as in the API
    secrets = ["db"]                                        # read at /var/openfaas/secrets/db
    [env]        KEY = "value"
    [scaling]    min_scale, max_scale, concurrency, idle_timeout
    [resources]  memory, cpus, pids, ulimits

Paths are relative to the manifest's folder. Validation of the values themselves is
the spec's (faas/spec.py); this module only maps the file onto it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidSpec
from .spec import FunctionSpec

# The scaling fields sit in their own [scaling] table; every other spec field
# is a top-level key (derived from the model, so a new field needs no edit here).
SCALING_KEYS = frozenset({"min_scale", "max_scale", "concurrency", "idle_timeout"})
SPEC_KEYS = frozenset(FunctionSpec.model_fields) - SCALING_KEYS
SOURCE_KEYS = frozenset({"build", "lang"})


@dataclass
class Manifest:
    spec: dict[str, object] = field(default_factory=dict)
    build: Path | None = None  # a folder with a Dockerfile
    lang: str | None = None  # a handler template, built from `folder`
    folder: Path = field(default_factory=Path)


def _scaling(table: dict[str, object]) -> dict[str, object]:
    for key in table:
        if key not in SCALING_KEYS:
            raise InvalidSpec(f"scaling.{key}", "unknown field")
    return table


def load(path: Path) -> Manifest:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidSpec("manifest", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSpec("manifest", f"{path} is not valid TOML: {exc}") from exc
    folder = path.resolve().parent
    manifest = Manifest(folder=folder)
    for key, value in data.items():
        if key in SPEC_KEYS:
            manifest.spec[key] = value
        elif key == "scaling" and isinstance(value, dict):
            manifest.spec.update(_scaling(value))
        elif key == "build":
            manifest.build = (folder / str(value)).resolve()
        elif key == "lang":
            manifest.lang = str(value)
        else:
            raise InvalidSpec(key, "unknown field in the manifest")
    if sum(x is not None for x in (manifest.spec.get("image"), manifest.build, manifest.lang)) > 1:
        raise InvalidSpec("image", "give only one of image, build and lang")
    return manifest
