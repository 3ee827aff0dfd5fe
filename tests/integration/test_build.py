"""Getting code in: Dockerfile builds, image archives, registry pulls."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from .conftest import ECHO_IMAGE, Stack, assert_refused, cli, fn_name, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def built_images(engine: docker.DockerClient) -> Iterator[list[str]]:
    """Names of functions whose faas/<name>:* images the test built; removed after."""
    names: list[str] = []
    yield names
    for name in names:
        for image in engine.images.list(name=f"faas/{name}"):
            left = engine.containers.list(all=True, filters={"ancestor": str(image.id)})
            for container in left:
                container.remove(force=True)  # left by a failed assertion
            engine.images.remove(str(image.id), force=True)


def test_dockerfile_build_deploys_and_honours_dockerignore(
    stack: Stack, tmp_path: Path, built_images: list[str]
) -> None:
    name = fn_name("built")
    built_images.append(name)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {ECHO_IMAGE}\nCOPY . /ctx/\nENV ECHO_BUILT=yes\n"
        "RUN test -e /ctx/kept.txt && test ! -e /ctx/secret.txt\n"
    )
    (tmp_path / "kept.txt").write_text("kept")
    (tmp_path / "secret.txt").write_text("must not reach the engine")
    (tmp_path / ".dockerignore").write_text("secret.txt\n")
    code, _, err = cli(stack, "deploy", name, "--build", str(tmp_path))
    assert code == 0, err
    assert "Step 1/" in err  # the build output streamed back
    shown = stack.api("GET", f"/functions/{name}").json()
    assert shown["image"].startswith(f"faas/{name}:")
    assert stack.invoke(name).json()["env"]["ECHO_BUILT"] == "yes"

    # Same context, same tag: the content hash names the image.
    code, _, err = cli(stack, "deploy", name, "--build", str(tmp_path))
    assert code == 0, err
    assert stack.api("GET", f"/functions/{name}").json()["image"] == shown["image"]
    stack.api("DELETE", f"/functions/{name}")


def test_failed_build_keeps_the_running_version(
    stack: Stack, tmp_path: Path, built_images: list[str]
) -> None:
    name = fn_name("badbuild")
    built_images.append(name)
    assert stack.deploy(name, env={"ECHO_V": "1"}).status_code == 200
    (tmp_path / "Dockerfile").write_text(f"FROM {ECHO_IMAGE}\nRUN echo about to fail && exit 3\n")
    code, _, err = cli(stack, "deploy", name, "--build", str(tmp_path))
    assert code == 1
    assert "about to fail" in err  # the failing step's own output
    assert "returned a non-zero code: 3" in err
    assert err.strip().splitlines()[-1].startswith("faas: error: build failed")
    assert stack.invoke(name).json()["env"]["ECHO_V"] == "1"
    assert stack.api("GET", f"/functions/{name}").json()["image"] == ECHO_IMAGE
    stack.api("DELETE", f"/functions/{name}")


def imports_and_serves(stack: Stack, engine: docker.DockerClient, archive: Path, ref: str) -> None:
    """`faas import` loads `archive` as `ref`, which then deploys and answers; the
    image is removed afterwards."""
    try:
        code, out, err = cli(stack, "import", str(archive))
        assert code == 0, err
        assert out.split() == [ref]
        with stack.deployed("imported", image=ref) as name:
            assert stack.invoke(name).status_code == 200
    finally:
        engine.images.remove(ref, force=True)


def test_import_an_archive_then_deploy(
    stack: Stack, engine: docker.DockerClient, tmp_path: Path
) -> None:
    ref = f"faas-test/imported:{secrets.token_hex(4)}"
    engine.images.get(ECHO_IMAGE).tag(ref)
    archive = tmp_path / "image.tar"
    with archive.open("wb") as f:
        for chunk in engine.images.get(ref).save(named=True):
            f.write(chunk)
    engine.images.remove(ref)
    imports_and_serves(stack, engine, archive, ref)
    code, _, err = cli(stack, "import", str(tmp_path / "missing.tar"))
    assert code == 1
    assert "cannot read" in err


def test_import_an_oci_layout_archive(
    stack: Stack, engine: docker.DockerClient, tmp_path: Path
) -> None:
    """skopeo writes the OCI image layout (index.json), which Docker 20.10 cannot load."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.fail("skopeo is not installed; run `make test-deps`")
    ref = f"faas-test/oci:{secrets.token_hex(4)}"
    archive = tmp_path / "oci.tar"
    subprocess.run(
        [skopeo, "copy", f"docker-daemon:{ECHO_IMAGE}", f"oci-archive:{archive}:{ref}"],
        check=True,
        capture_output=True,
    )
    with tarfile.open(archive) as tar:
        assert "index.json" in tar.getnames()
        assert "manifest.json" not in tar.getnames()
    imports_and_serves(stack, engine, archive, ref)
    archive.write_bytes(b"not a tar")
    code, _, err = cli(stack, "import", str(archive))
    assert code == 1
    assert "archive" in err


@contextlib.contextmanager
def serve_registry(users: dict[str, str] | None = None) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, optionally with htpasswd users."""
    binary = shutil.which("docker-registry")
    htpasswd = shutil.which("htpasswd")
    if binary is None or (users and htpasswd is None):
        pytest.fail("docker-registry or htpasswd (apache2-utils) is missing; run `make test-deps`")
    root = Path(tempfile.mkdtemp(prefix="faas-registry-"))
    address = f"127.0.0.1:{free_port()}"
    config = (
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    if users:
        lines = [
            subprocess.run(
                [str(htpasswd), "-Bbn", user, password], capture_output=True, text=True, check=True
            ).stdout.strip()
            for user, password in users.items()
        ]
        (root / "htpasswd").write_text("\n".join(lines) + "\n")
        config += f"auth:\n  htpasswd:\n    realm: faas\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(config)
    process = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        host, port = address.split(":")
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "registry did not start"
                time.sleep(0.05)
        yield address.replace("127.0.0.1", "localhost")
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def registry() -> Iterator[str]:
    with serve_registry() as address:
        yield address


def test_private_registry_with_explicit_credentials(
    stack: Stack, engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_registry({"faas": "s3cret-pass"}) as registry:
        ref = f"{registry}/private/echo:{secrets.token_hex(4)}"
        engine.images.get(ECHO_IMAGE).tag(ref)
        credentials = {"username": "faas", "password": "s3cret-pass"}
        for _ in engine.api.push(ref, stream=True, decode=True, auth_config=credentials):
            pass
        engine.images.remove(ref)
        name = fn_name("private")
        try:
            code, _, err = cli(stack, "deploy", name, "--image", ref)
            assert code == 1
            assert "no basic auth credentials" in err
            monkeypatch.setenv("FAAS_REGISTRY_USER", "faas")
            monkeypatch.setenv("FAAS_REGISTRY_PASSWORD", "wrong")
            code, _, err = cli(stack, "deploy", name, "--image", ref)
            assert code == 1
            monkeypatch.setenv("FAAS_REGISTRY_PASSWORD", "s3cret-pass")
            code, _, err = cli(stack, "deploy", name, "--image", ref)
            assert code == 0, err
            assert stack.invoke(name).status_code == 200
            stack.api("DELETE", f"/functions/{name}")
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(ref, force=True)
    got = stack.api("POST", "/images/pull", json={"image": ref, "auth": {"username": "x"}})
    assert got.status_code == 422
    assert "auth" in got.json()["error"]


def test_deploy_by_reference_pulls_from_a_registry(
    stack: Stack, engine: docker.DockerClient, registry: str
) -> None:
    ref = f"{registry}/faas-test/echo:{secrets.token_hex(4)}"
    engine.images.get(ECHO_IMAGE).tag(ref)
    for _ in engine.images.push(ref, stream=True, decode=True):
        pass
    engine.images.remove(ref)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(ref)
    name = fn_name("pulled")
    try:
        code, _, err = cli(stack, "deploy", name, "--image", ref)
        assert code == 0, err
        assert "Status: Downloaded newer image" in err  # the pull's progress, shown
        engine.images.get(ref)  # it was pulled
        assert stack.invoke(name).status_code == 200
        stack.api("DELETE", f"/functions/{name}")
    finally:
        engine.images.remove(ref, force=True)
    # A reference the registry does not have: a clear error naming it, nothing created.
    missing = f"{registry}/faas-test/nothing:here"
    code, _, err = cli(stack, "deploy", fn_name("missing"), "--image", missing)
    assert code == 1
    assert missing in err


def test_an_unreachable_registry_is_not_a_missing_image(
    stack: Stack, engine: docker.DockerClient, registry: str
) -> None:
    port = free_port()  # nothing listens there
    closed = f"127.0.0.1:{port}/faas-test/echo:x"
    got = stack.api("POST", "/images/pull", json={"image": closed})
    assert got.status_code == 502, got.text
    error = got.json()
    assert error["error"].startswith(f"cannot reach the registry 127.0.0.1:{port} to pull")
    assert "connection refused" in error["error"]
    assert error["detail"]["registry"] == f"127.0.0.1:{port}"
    name = fn_name("unreachable")
    assert_refused(stack, engine, "PUT", f"/functions/{name}", {"image": closed}, 502,
                   "cannot reach the registry")  # fmt: skip
    code, _, err = cli(stack, "deploy", name, "--image", closed)
    assert code == 1
    assert "cannot reach the registry" in err
    # The registry is there and says it has no such image.
    missing = f"{registry}/faas-test/nothing:here"
    got = stack.api("POST", "/images/pull", json={"image": missing})
    assert got.status_code == 422, got.text
    assert got.json()["error"].startswith(f"image {missing!r} not found: ")
    assert "manifest unknown" in got.json()["error"]
    assert_refused(stack, engine, "PUT", f"/functions/{name}", {"image": missing}, 422,
                   "not found")  # fmt: skip
