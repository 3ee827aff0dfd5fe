"""The CLI runs without the engine's SDK or the gateway's web stack."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_imports_neither_docker_nor_starlette() -> None:
    code = (
        "import sys, faas.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'starlette', 'uvicorn'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
