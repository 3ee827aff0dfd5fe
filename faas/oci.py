"""OCI image-layout archives for engines that load only `docker save` archives.

Docker before 25 loads only its own format (manifest.json beside the blobs), while
tools like skopeo, buildah and crane write the OCI image layout (index.json).
Both hold the same blobs; this adds the manifest.json that Docker reads.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from typing import IO, cast

REF_NAME = "org.opencontainers.image.ref.name"


def as_docker_archive(archive: IO[bytes]) -> IO[bytes]:
    """The archive itself when Docker can load it; else a copy with a manifest.json."""
    with tarfile.open(fileobj=archive, mode="r:*") as tar:
        names = set(tar.getnames())
        if "manifest.json" in names or "index.json" not in names:
            archive.seek(0)
            return archive
        manifest = _docker_manifest(tar)
    archive.seek(0)
    out = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - returned
    with (
        tarfile.open(fileobj=archive, mode="r:*") as source,
        tarfile.open(fileobj=out, mode="w") as target,
    ):
        for member in source:
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        target.addfile(info, io.BytesIO(data))
    out.seek(0)
    return cast(IO[bytes], out)


def _blob(tar: tarfile.TarFile, digest: str) -> dict[str, object]:
    algorithm, _, value = digest.partition(":")
    member = tar.extractfile(f"blobs/{algorithm}/{value}")
    if member is None:
        raise ValueError(f"missing blob {digest}")
    return cast(dict[str, object], json.load(member))


def _docker_manifest(tar: tarfile.TarFile) -> list[dict[str, object]]:
    index = tar.extractfile("index.json")
    if index is None:
        raise ValueError("no index.json")
    entries: list[dict[str, object]] = []
    for descriptor in cast(list[dict[str, object]], json.load(index)["manifests"]):
        manifest = _blob(tar, str(descriptor["digest"]))
        config = cast(dict[str, str], manifest["config"])["digest"]
        layers = [str(layer["digest"]) for layer in cast(list[dict[str, str]], manifest["layers"])]
        annotations = cast(dict[str, str], descriptor.get("annotations") or {})
        ref = annotations.get(REF_NAME)
        entries.append(
            {
                "Config": _path(config),
                # skopeo names the image "repo:tag" here; a bare tag has no repository.
                "RepoTags": [ref] if ref and ":" in ref else [],
                "Layers": [_path(digest) for digest in layers],
            }
        )
    return entries


def _path(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    return f"blobs/{algorithm}/{value}"
