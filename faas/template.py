"""Function templates: scaffold a handler (`faas new`) and assemble its build context."""

from __future__ import annotations

import io
import string
import tarfile
from pathlib import Path

from .errors import InvalidSpec

TEMPLATES = Path(__file__).resolve().parent / "templates"
RUNTIME = Path(__file__).resolve().parent / "runtime"
LANGS = ("python",)
SKIP = frozenset({"__pycache__", ".git", ".venv", "faas.toml", ".dockerignore"})


def _check(lang: str) -> Path:
    if lang not in LANGS:
        raise InvalidSpec("lang", f"{lang!r} is not a template; choose from {', '.join(LANGS)}")
    return TEMPLATES / lang


def scaffold(name: str, lang: str, folder: Path) -> list[Path]:
    """Write the template's starter files into `folder` (which must not exist)."""
    template = _check(lang)
    if folder.exists():
        raise InvalidSpec("dir", f"{folder} already exists")
    folder.mkdir(parents=True)
    written = []
    for source in sorted(template.iterdir()):
        if source.name == "Dockerfile":
            continue  # part of the platform, not of the function
        text = string.Template(source.read_text()).safe_substitute(name=name)
        (folder / source.name).write_text(text)
        written.append(folder / source.name)
    return written


def context(lang: str, folder: Path) -> io.BytesIO:
    """A tar build context: the template's Dockerfile, the runtime, the function as app/."""
    template = _check(lang)
    if not (folder / "handler.py").is_file():
        raise InvalidSpec("lang", f"no handler.py in {folder}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(template / "Dockerfile", arcname="Dockerfile")
        for path in sorted(RUNTIME.glob("*.py")):
            tar.add(path, arcname=f"faas_runtime/{path.name}")
        _add_tree(tar, folder, "app")
        if not (folder / "requirements.txt").exists():
            empty = tarfile.TarInfo("app/requirements.txt")
            tar.addfile(empty, io.BytesIO(b""))
    buffer.seek(0)
    return buffer


def _add_tree(tar: tarfile.TarFile, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if SKIP & set(relative.parts) or path.is_dir():
            continue
        tar.add(path, arcname=f"{prefix}/{relative.as_posix()}")
