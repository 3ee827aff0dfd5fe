"""The `faas` command line."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import IO, Annotated, ParamSpec, TypeVar, cast

import typer

from . import manifest, template
from .client import Client
from .config import Settings
from .errors import FaasError
from .spec import check_new_name

app = typer.Typer(
    help="Functions as containers on Docker, routed by Traefik.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")


class Connection:
    """Where the CLI's commands go (the global --url and --token)."""

    url: str = "http://127.0.0.1:8080"
    token: str | None = None

    @classmethod
    def client(cls) -> Client:
        return Client(cls.url, cls.token)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"faas: error: {message}", err=True)
    return typer.Exit(code)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn platform errors into one line on stderr and exit code 1."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except FaasError as exc:
            raise fail(exc.message) from None

    return wrapper


def _default_token() -> str | None:
    """On the host that runs `faas up`, the token file saves typing --token."""
    try:
        return Settings().token_file.read_text().strip() or None
    except (OSError, ValueError):
        return None


@app.callback()
def main(
    url: Annotated[
        str, typer.Option(envvar="FAAS_URL", help="Where faas listens (Traefik's web entrypoint).")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FAAS_TOKEN",
            help="Admin token; defaults to the token file of a local `faas up`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    Connection.url = url
    Connection.token = token or _default_token()


@app.command()
@reports_errors
def up(
    port: Annotated[int | None, typer.Option(help="Port of Traefik's web entrypoint.")] = None,
    host: Annotated[str | None, typer.Option(help="Address of Traefik's web entrypoint.")] = None,
    reload: Annotated[
        bool, typer.Option(help="Restart the gateway when its code changes.")
    ] = False,
) -> None:
    """Run Traefik and the gateway on this host until Ctrl-C."""
    from . import up as up_module
    from .logging import configure_logging

    overrides: dict[str, object] = {}
    if port is not None:
        overrides["http_port"] = port
    if host is not None:
        overrides["http_host"] = host
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(f"bad settings: {exc}", 2) from None
    configure_logging(settings.log_level, settings.log_format)
    raise typer.Exit(up_module.run(settings, reload=reload))


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def _parse_gpus(raw: str | None) -> str | int | list[str] | None:
    if raw is None or raw == "all":
        return raw
    if raw.isdigit():
        return int(raw)
    return [g.strip() for g in raw.split(",") if g.strip()]


@app.command()
@reports_errors
def deploy(
    name: Annotated[
        str | None, typer.Argument(help="Function name (default: the manifest's).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Manifest (faas.toml); flags win.")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Image to run; pulled (with progress) when missing.")
    ] = None,
    build: Annotated[
        Path | None,
        typer.Option(help="Directory with a Dockerfile to build and run instead of --image."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port the function listens on (default 8080).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")
    ] = None,
    command: Annotated[
        str | None, typer.Option(help="Command instead of the image's CMD (split like a shell).")
    ] = None,
    health_path: Annotated[
        str | None, typer.Option(help="Path probed until it answers (default /).")
    ] = None,
    min_scale: Annotated[
        int | None,
        typer.Option(min=0, help="Replicas always running; 0 (default) lets it scale to zero."),
    ] = None,
    max_scale: Annotated[
        int | None, typer.Option(min=1, help="Most replicas the autoscaler runs (default 10).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Target requests in flight per replica (default 10)."),
    ] = None,
    idle_timeout: Annotated[
        int | None,
        typer.Option(min=0, help="Seconds without traffic before it scales to zero; 0: never."),
    ] = None,
    pause_timeout: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Seconds without traffic before it is paused (memory kept, resumes in tens "
            "of ms); 0: never. Default: FAAS_PAUSE_TIMEOUT.",
        ),
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="OCI runtime: runc, crun, runsc, kata, nvidia...")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="'all', a count, or comma-separated device ids.")
    ] = None,
    memory: Annotated[str | None, typer.Option(help="Memory limit, e.g. 64m (no swap).")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU quota in cores, e.g. 0.5.")] = None,
    pids: Annotated[int | None, typer.Option(help="Process limit.")] = None,
    auth: Annotated[
        str | None, typer.Option(help="'public' (default), or 'key': callers need an invoke key.")
    ] = None,
    read_only: Annotated[
        bool | None, typer.Option(help="Read-only root filesystem, a tmpfs on /tmp (default).")
    ] = None,
    cap_add: Annotated[
        list[str] | None, typer.Option(help="Capability to add back (admin-allowed), repeatable.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE container label.")
    ] = None,
    constraint: Annotated[
        list[str] | None,
        typer.Option(help="Swarm placement constraint, e.g. node.labels.gpu==true; repeatable."),
    ] = None,
    spread: Annotated[
        list[str] | None,
        typer.Option(
            help="Spread replicas over a node label's values (Swarm), e.g. node.labels.zone."
        ),
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            help="Secret it reads at /var/openfaas/secrets/NAME (`faas secrets create`), "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """Deploy a function, or replace it; returns once it answers through Traefik."""
    loaded = manifest.load(file) if file is not None else manifest.Manifest()
    spec = dict(loaded.spec)
    flags = {
        "name": name, "port": port, "health_path": health_path, "min_scale": min_scale,
        "max_scale": max_scale, "concurrency": concurrency, "idle_timeout": idle_timeout,
        "pause_timeout": pause_timeout,
        "runtime": runtime, "gpus": _parse_gpus(gpus),
        "command": shlex.split(command) if command else None,
        "auth": auth, "read_only": read_only, "cap_add": cap_add or None,
        "constraints": constraint or None, "spread": spread or None,
    }  # fmt: skip
    spec.update({k: v for k, v in flags.items() if v is not None})
    spec["env"] = {**_table(spec.get("env")), **_parse_env(env or [])}
    spec["labels"] = {**_table(spec.get("labels")), **_parse_env(label or [])}
    if secret:
        listed = spec.get("secrets")
        spec["secrets"] = [*(listed if isinstance(listed, list) else []), *secret]
    limits = {"memory": memory, "cpus": cpus, "pids": pids}
    spec["resources"] = {**_table(spec.get("resources")), **{k: v for k, v in limits.items() if v}}
    if "name" not in spec:
        raise typer.BadParameter("give a NAME or a manifest with a name")
    fn = str(spec["name"])
    client = Connection.client()
    if build is not None or image is not None:
        loaded.build, loaded.lang = build, None
        spec["image"] = image
    if sum(x is not None for x in (spec.get("image"), loaded.build, loaded.lang)) != 1:
        raise typer.BadParameter("give exactly one of --image and --build (or a manifest)")
    if loaded.lang is not None:
        spec["image"] = _build(client, fn, template.context(loaded.lang, loaded.folder), True)
    elif loaded.build is not None:
        spec["image"] = _build(client, fn, _dockerfile_context(loaded.build), False)
    else:
        _pull(client, str(spec["image"]))
    function = client.deploy(spec)
    typer.echo(f"deployed {fn}: {Connection.url}/function/{fn} ({function['state']})")


def _table(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


def _dockerfile_context(directory: Path) -> IO[bytes]:
    if not (directory / "Dockerfile").is_file():
        raise typer.BadParameter(f"no Dockerfile in {directory}", param_hint="--build")
    return template.dockerfile_context(directory)


def _pull(client: Client, image: str) -> str:
    """Pull through the API, showing the engine's progress on stderr.

    FAAS_REGISTRY_USER and FAAS_REGISTRY_PASSWORD, when set, log in to the image's
    registry (environment only: a password on the command line ends up in `ps`)."""
    user, password = os.environ.get("FAAS_REGISTRY_USER"), os.environ.get("FAAS_REGISTRY_PASSWORD")
    auth = {"username": user, "password": password} if user and password else None
    for event in client.pull(image, auth):
        if "error" in event:
            raise FaasError(str(event["error"]))
        status, layer = event.get("status"), event.get("id")
        if status and status != "ready":
            prefix = f"{layer}: " if layer else ""
            typer.echo(f"{prefix}{status} {event.get('progress') or ''}".rstrip(), err=True)
    return image


def _build(client: Client, name: str, context: IO[bytes], is_template: bool) -> str:
    """Build through the API, streaming the build output to stderr; the image built."""
    with context:
        for event in client.build(name, context, template=is_template):
            if "stream" in event:
                typer.echo(str(event["stream"]).rstrip("\n"), err=True)
            elif "error" in event:
                detail = event.get("detail")
                if isinstance(detail, dict) and detail.get("log"):
                    typer.echo(str(detail["log"]).rstrip("\n"), err=True)
                raise FaasError(str(event["error"]))
            elif "image" in event:
                return str(event["image"])
    raise FaasError("the build ended without an image")


@app.command()
@reports_errors
def new(
    name: Annotated[str, typer.Argument(help="Function name.")],
    lang: Annotated[str, typer.Option(help="Template language.")] = "python",
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to create it (default ./NAME).")
    ] = None,
) -> None:
    """Create a function from a template: handler, requirements and faas.toml."""
    check_new_name(name)
    folder = directory or Path(name)
    for path in template.scaffold(name, lang, folder):
        typer.echo(f"created {path}")
    typer.echo(f"deploy it with: faas deploy -f {folder / 'faas.toml'}")


@app.command("import")
@reports_errors
def import_(
    archive: Annotated[Path, typer.Argument(help="docker-save or OCI layout tarball.")],
) -> None:
    """Load an image archive into the engine and print the references to deploy."""
    try:
        with archive.open("rb") as f:
            images = Connection.client().load(f)
    except OSError as exc:
        raise fail(f"cannot read {archive}: {exc.strerror}") from None
    for ref in images:
        typer.echo(ref)


@app.command("list")
@reports_errors
def list_() -> None:
    """List functions."""
    rows = [["NAME", "STATE", "READY", "IMAGE", "PORT", "CREATED"]]
    for fn in Connection.client().list():
        state = str(fn["state"]) + (f" ({fn['reason']})" if fn.get("reason") else "")
        rows.append(
            [str(fn["name"]), state, _replicas(fn), str(fn["image"]), str(fn["port"]),
             str(fn["created"])]
        )  # fmt: skip
    _echo_table(rows)


def _replicas(fn: dict[str, object]) -> str:
    """Ready/desired replicas, as kubectl shows them."""
    return f"{fn.get('ready_replicas', 0)}/{fn.get('replicas', 0)}"


def _echo_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command()
@reports_errors
def stats(
    name: Annotated[str | None, typer.Argument(help="Only this function.")] = None,
) -> None:
    """Per function: state, invocations, 5xx rate, p50/p99 latency, cold starts, memory.

    Invocations and latency are Traefik's (warm path) since Traefik started;
    cold starts are the gateway's since it started; memory is the last sample.
    A latency marked ≤ or > is all Traefik's histogram buckets tell: at most
    their first bound, or more than their last."""
    rows = [["NAME", "STATE", "INVOCATIONS", "ERRORS", "P50", "P99", "COLD", "MEMORY"]]
    for fn in Connection.client().stats(name):
        rows.append(
            [
                str(fn["name"]),
                str(fn["state"]),
                str(fn["invocations"]),
                _percent(fn["error_rate"]),
                _latency(fn["p50_seconds"], fn.get("p50_bound")),
                _latency(fn["p99_seconds"], fn.get("p99_bound")),
                str(fn["cold_starts"]),
                _memory(fn["memory_bytes"], fn["memory_limit_bytes"]),
            ]
        )
    _echo_table(rows)


def _percent(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def _latency(seconds: object, bound: object) -> str:
    """`12.4ms`, or `≤0.5ms` / `>60s` when the histogram only bounds the quantile."""
    if not isinstance(seconds, int | float):
        return "-"
    figure = f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.3g}s"
    return {"le": "≤", "gt": ">"}.get(str(bound), "") + figure


def _memory(used: object, limit: object) -> str:
    if not isinstance(used, int):
        return "-"
    mib = used / 2**20
    return f"{mib:.1f}/{limit / 2**20:.0f}MiB" if isinstance(limit, int) else f"{mib:.1f}MiB"


@app.command()
@reports_errors
def describe(name: Annotated[str, typer.Argument(help="Function name.")]) -> None:
    """Show a function's spec and state as JSON."""
    typer.echo(json.dumps(Connection.client().get(name), indent=2))


def _parse_header(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition(":")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{raw!r} is not 'Name: value'", param_hint="-H")
    return key.strip(), value.strip()


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {data[1:]}: {exc.strerror}", param_hint="-d"
            ) from None
    return data.encode()


@app.command()
@reports_errors
def invoke(
    name: Annotated[str, typer.Argument(help="Function name.")],
    path: Annotated[str, typer.Argument(help="Path (and ?query) under the function.")] = "/",
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Body; @FILE reads a file, @- stdin.")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--request", "-X", help="Method; POST with -d, else GET.")
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="'Name: value', repeatable.")
    ] = None,
    include: Annotated[
        bool, typer.Option("--include", "-i", help="Print status line and headers.")
    ] = False,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="FAAS_KEY", help="Invoke key of a `--auth key` function.", show_default=False
        ),
    ] = None,
) -> None:
    """Call a function through Traefik and print its answer; exit 1 on HTTP >= 400."""
    body = _read_data(data)
    headers = dict(_parse_header(h) for h in header or [])
    if key:
        headers["X-Faas-Key"] = key
    verb = (method or ("POST" if body is not None else "GET")).upper()
    response = Connection.client().invoke(name, path, verb, body, headers)
    if include:
        typer.echo(f"HTTP {response.status_code} {response.reason}")
        for key, value in response.headers.items():
            typer.echo(f"{key}: {value}")
        typer.echo("")
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    if response.status_code >= 400:
        raise fail(f"{name} answered HTTP {response.status_code}")


@app.command()
@reports_errors
def logs(
    name: Annotated[str, typer.Argument(help="Function name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only lines from this long ago on: 30s, 10m, 2h, 1d.")
    ] = None,
) -> None:
    """Print a function's logs, with timestamps."""
    # The engine counts whole seconds; rounding up never shows a line from before `since`.
    start = None if since is None else math.ceil(time.time() - duration(since))
    try:
        for chunk in Connection.client().logs(name, follow=follow, tail=tail, since=start):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(raw: str) -> int:
    """Seconds in `30s`, `10m`, `2h`, `1d` (or a bare number of seconds)."""
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in UNITS else (raw, "s")
    if not number.isdigit():
        raise typer.BadParameter(f"{raw!r} is not a duration like 30s, 10m, 2h, 1d or 3600")
    return int(number) * UNITS[unit]


@app.command()
@reports_errors
def scale(
    name: Annotated[str, typer.Argument(help="Function name.")],
    replicas: Annotated[
        int, typer.Argument(min=0, help="Replicas to run now, min_scale to max_scale; 0 stops it.")
    ],
) -> None:
    """Run N replicas now (0 stops it; a stopped function also wakes on its next request).

    The autoscaler keeps N for a stable window, then follows the load between the
    function's min_scale (at least 1) and max_scale."""
    function = Connection.client().scale(name, replicas)
    typer.echo(f"{name}: {function['state']}, {_replicas(function)} replicas")


@app.command()
@reports_errors
def pause(name: Annotated[str, typer.Argument(help="Function name.")]) -> None:
    """Pause a running function now: its memory kept, its next request resumes it in tens
    of ms; it is stopped at its idle timeout (see docs/scaling.md)."""
    function = Connection.client().pause(name)
    typer.echo(f"{name}: {function['state']}")


keys_app = typer.Typer(help="Invoke keys of `--auth key` functions.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def parse_ttl(raw: str | None) -> int | None:
    """'30d', '12h', '90m', '45s' or plain seconds; None: the key never expires."""
    if raw is None or raw == "never":
        return None
    seconds = duration(raw)
    if seconds == 0:
        raise typer.BadParameter("a key's lifetime must be longer than 0 seconds")
    return seconds


@keys_app.command("create")
@reports_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="Function the key may invoke.")],
    ttl: Annotated[
        str | None, typer.Option(help="Lifetime: 30d, 12h, 90m, seconds; never expires if unset.")
    ] = None,
) -> None:
    """Create an invoke key; it is printed once and cannot be shown again."""
    issued = Connection.client().create_key(name, parse_ttl(ttl))
    typer.echo(f"kid:     {issued['kid']}")
    typer.echo(f"expires: {issued['expires'] or 'never'}")
    typer.echo(f"key:     {issued['key']}")


@keys_app.command("revoke")
@reports_errors
def keys_revoke(
    kid: Annotated[str, typer.Argument(help="Key id, as `keys create` printed.")],
) -> None:
    """Revoke a key at once, for good."""
    Connection.client().revoke_key(kid)
    typer.echo(f"revoked {kid}")


secrets_app = typer.Typer(
    help="Secrets functions read as files, /var/openfaas/secrets/NAME.", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


def _secret_value(from_file: Path | None) -> bytes:
    """The file's bytes as they are; or stdin, less one trailing newline (`echo`'s)."""
    if from_file is not None:
        try:
            return from_file.read_bytes()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {from_file}: {exc.strerror}", param_hint="--from-file"
            ) from None
    if sys.stdin.isatty():
        raise typer.BadParameter(
            "pipe the value in (printf %s VALUE | faas secrets ...) or give --from-file"
        )
    value = sys.stdin.buffer.read()
    return value[:-1] if value.endswith(b"\n") else value


FromFile = Annotated[
    Path | None,
    typer.Option("--from-file", help="Read the value from this file (else from stdin)."),
]


@secrets_app.command("create")
@reports_errors
def secrets_create(
    name: Annotated[str, typer.Argument(help="Secret name (a DNS label).")],
    from_file: FromFile = None,
) -> None:
    """Create a secret from stdin or a file; the value is never shown again."""
    Connection.client().create_secret(name, _secret_value(from_file))
    typer.echo(f"created secret {name}")


@secrets_app.command("update")
@reports_errors
def secrets_update(
    name: Annotated[str, typer.Argument(help="Secret name.")],
    from_file: FromFile = None,
) -> None:
    """Give a secret a new value; the functions using it read it at once."""
    updated = Connection.client().update_secret(name, _secret_value(from_file))
    users = updated.get("used_by")
    used = ", ".join(str(u) for u in users) if isinstance(users, list) and users else "none"
    typer.echo(f"updated secret {name} (used by: {used})")


@secrets_app.command("ls")
@reports_errors
def secrets_list() -> None:
    """List secrets and the functions using each (never their values)."""
    rows = [["NAME", "USED BY"]]
    for row in Connection.client().secrets():
        users = row.get("used_by")
        rows.append(
            [str(row["name"]), ", ".join(map(str, users or [])) if isinstance(users, list) else ""]
        )
    _echo_table(rows)


@secrets_app.command("rm")
@reports_errors
def secrets_remove(name: Annotated[str, typer.Argument(help="Secret name.")]) -> None:
    """Remove a secret that no function uses."""
    Connection.client().remove_secret(name)
    typer.echo(f"removed secret {name}")


@app.command()
@reports_errors
def calls(
    args: Annotated[
        list[str], typer.Argument(help="NAME, or `retry ID`, or `drop ID`.", show_default=False)
    ],
    limit: Annotated[int, typer.Option(help="Most calls listed of each kind.")] = 100,
) -> None:
    """Asynchronous calls: `faas calls NAME` lists the queued, in-flight and failed
    calls of a function with their attempts and last error; `faas calls retry ID`
    queues a failed call again (or a waiting one now); `faas calls drop ID` drops one."""
    client = Connection.client()
    if len(args) == 2 and args[0] == "retry":
        call = client.retry_call(args[1])
        typer.echo(f"queued call {call['id']} of {call['function']} again")
        return
    if len(args) == 2 and args[0] == "drop":
        client.drop_call(args[1])
        typer.echo(f"dropped call {args[1]}")
        return
    if len(args) != 1:
        raise fail("usage: faas calls NAME | faas calls retry ID | faas calls drop ID", 2)
    listed = client.calls(args[0], limit)
    rows = [["ID", "STATE", "ATTEMPTS", "LAST ERROR", "AGE"]]
    now = time.time()
    for call in cast(list[dict[str, object]], listed["calls"]):
        age = now - float(cast(float, call["enqueued"]))
        rows.append(
            [str(call["id"]), str(call["state"]), str(call["attempts"]),
             str(call["last_error"] or "-")[:60], f"{age:.0f}s"]
        )  # fmt: skip
    typer.echo(f"{listed['queued']} queued")
    _echo_table(rows)


@app.command("rm")
@reports_errors
def remove(name: Annotated[str, typer.Argument(help="Function name.")]) -> None:
    """Remove a function and its container."""
    Connection.client().remove(name)
    typer.echo(f"removed {name}")


if __name__ == "__main__":
    app()
