"""Function templates: scaffold a handler (`faas new`) and assemble its build context."""

from __future__ import annotations

import io
import posixpath
import re
import string
import tarfile
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, cast

from .errors import ImageNotFound, InvalidSpec, RegistryUnreachable

if TYPE_CHECKING:
    from .config import Settings
    from .provider import Provider

TEMPLATES = Path(__file__).resolve().parent / "templates"
RUNTIME = Path(__file__).resolve().parent / "runtime"
LANGS = ("python",)
SKIP = frozenset({"__pycache__", ".git", ".venv", "faas.toml", ".dockerignore"})
# What `make images` (scripts/images.sh) builds where the public base cannot be pulled.
OFFLINE_BASE = "faas/python-base:bookworm"


class BaseImage(NamedTuple):
    """The image a template build starts FROM; `note` says why, when it is not the setting."""

    image: str
    note: str | None = None


def base_image(provider: Provider, settings: Settings) -> BaseImage:
    """Choose the base of a template build, pulling it when the engine lacks it.

    An explicit FAAS_BASE_IMAGE always wins: when it cannot be had, ImageNotFound names
    it. When the default cannot be had but the engine has the offline base, that one is
    used, so `faas new` + `faas deploy` work without a registry.
    """
    configured = settings.base_image
    try:
        _obtain(provider, configured)
        return BaseImage(configured)
    except (ImageNotFound, RegistryUnreachable) as exc:  # offline: no registry answers
        if "base_image" in settings.model_fields_set:
            raise
        missing = exc
    if provider.image_labels(OFFLINE_BASE) is None:  # only ever built here, never pulled
        raise ImageNotFound(
            configured, f"{missing.reason}; without a registry, `make images` builds "
            f"{OFFLINE_BASE}, which is used when FAAS_BASE_IMAGE is not set"
        ) from missing  # fmt: skip
    return BaseImage(
        OFFLINE_BASE,
        f"note: {configured} cannot be pulled ({missing.reason}); building on the "
        f"offline base {OFFLINE_BASE} instead (set FAAS_BASE_IMAGE to choose one)",
    )


def _obtain(provider: Provider, image: str) -> None:
    """Have `image` on the engine: nothing to do when present, else pull it whole."""
    for _ in provider.pull(image):
        pass


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


def dockerfile_context(directory: Path) -> IO[bytes]:
    """`directory` as a tar build context, minus what its .dockerignore excludes.

    The rules are Docker's: one pattern a line (`#` comments), `*` and `?` within
    a path element, `**` across elements, `!` re-includes; the last matching
    pattern decides, and excluding a directory excludes what is under it. The
    Dockerfile and .dockerignore are always sent, as the docker CLI does.
    """
    rules = _ignore_rules(directory / ".dockerignore")
    buffer = tempfile.TemporaryFile()  # noqa: SIM115 - returned
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory).as_posix()
            if relative in ("Dockerfile", ".dockerignore") or not ignored(relative, rules):
                tar.add(path, arcname=relative, recursive=False)
    buffer.seek(0)
    return cast(IO[bytes], buffer)


def _ignore_rules(path: Path) -> list[tuple[re.Pattern[str], bool]]:
    if not path.exists():
        return []
    rules = []
    for line in path.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        pattern = posixpath.normpath(pattern.removeprefix("!").strip()).lstrip("/")
        rules.append((_pattern(pattern), keep))
    return rules


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over a relative path (or one of its parents)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 2
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"{out}(?:/.*)?")


def ignored(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether the last rule matching `relative` excludes it."""
    excluded = False
    for regex, keep in rules:
        if regex.fullmatch(relative):
            excluded = not keep
    return excluded
