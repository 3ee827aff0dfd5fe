"""The platform's sequences, above the `Provider` and `Router` contracts.

    deploy    policy -> image -> create -> start -> ready -> routed -> retire the old
              ones behind a drain (rolling replacement: no request lost)
    wake      single-flight: one start however many requests wait; drained
              until the container answers
    scale_down  drain -> stop -> unrouted -> undrain
    pause     drain -> pause (cgroup freezer); the drain stays while it is paused, so
              the proxy never sends a request to a frozen container (it would hang)
    resume    single-flight as a wake: unpause -> answers -> undrain; the requests that
              came meanwhile are forwarded by the gateway itself
    remove    retire every instance, wait until unrouted
    fence     a node stopped answering (faas.nodes): drain the functions with
              replicas there and elsewhere, forward to the others until the
              engine has moved the lost ones and the proxy forgot them -> undrain
    secrets   a function's secrets exist before anything is made; the provider
              mounts them; a new value reaches the running instances (or they
              are replaced); a secret in use cannot be removed

A paused function leaves the paused tier by a resume, a stop (at its idle
timeout, or when more than FAAS_MAX_PAUSED are paused: the one paused the
longest), a deploy or a removal; each thaws it first, and releases its drain
once the proxy no longer routes to the frozen container. The gateway holds the
paused functions' drains in `_paused`, rebuilt from the engine at its start.

Blocking sequences hold a per-function lock and run in worker threads; the
async layer (`wake`, `scale_down`, `address`) coordinates the requests that
wait for them. Providers only make engine calls, so a new engine gets all of
this by implementing `faas.provider.Provider`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import http.client
import random
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from loguru import logger
from starlette.concurrency import run_in_threadpool

from . import policy
from .config import Settings
from .errors import (
    Cause,
    DeployFailed,
    FaasError,
    FunctionNotFound,
    ImageNotFound,
    InvalidSpec,
    NoRoom,
    ProviderError,
    SecretInUse,
    SecretNotFound,
    WakeFailed,
)
from .metrics import Metrics
from .provider import (
    Function,
    Instance,
    Provider,
    Router,
    StartTimes,
    State,
    function_of,
    live,
    serving,
)
from .secretstore import SecretStore
from .spec import FunctionSpec, memory_bytes

# (address "ip:port", health path) -> True once it answers HTTP below 500.
Probe = Callable[[str, str], bool]
# Probing is cheap, asking the engine is not: ask it on the first probe and
# then every this many, to notice a crash (or learn the address).
INSPECT_EVERY = 10
PROBE_PAUSE = 0.01
# How often a fence asks the engine whether it has moved a lost node's instances.
FENCE_POLL = 0.5
# Pause attempts per instance (the engine's freezer can time out under load).
PAUSE_ATTEMPTS = 3


def http_probe(address: str, path: str) -> bool:
    """True once something answers HTTP below 500 at `address`."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        # On a local bridge a live address connects in well under a millisecond;
        # a dead one (the container just exited) would hang in ARP for seconds.
        conn.sock = socket.create_connection((host, int(port)), timeout=0.2)
        conn.sock.settimeout(2)
        conn.request("GET", path, headers={"User-Agent": "faas-readiness"})
        return conn.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Lifecycle:
    """Deploys, wakes, scales down and removes functions on one provider."""

    def __init__(
        self,
        provider: Provider,
        router: Router | None,
        settings: Settings,
        metrics: Metrics | None = None,
        probe: Probe = http_probe,
        secrets: SecretStore | None = None,
    ) -> None:
        self.provider = provider
        smallest, largest = settings.secret_sizes
        self.secrets = secrets or SecretStore(settings.secrets_dir, largest, smallest)
        # Secrets that deploys in flight have checked and will use, by function: a
        # secret must not go between a deploy's check and its containers' labels.
        self._deploying: dict[str, frozenset[str]] = {}
        self._secrets_guard = threading.Lock()
        self.router = router
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.probe = probe
        self.starts: Counter[str] = Counter()  # wakes per function since the gateway started
        self.resumes: Counter[str] = Counter()  # ... and resumes from the paused tier
        # Paused functions whose drain this gateway holds -> when they were paused (monotonic).
        self._paused: dict[str, float] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._waking: dict[str, asyncio.Future[Function]] = {}
        self._draining: dict[str, asyncio.Event] = {}
        # Instances the gateway must not forward to: not answering yet, or on their way out.
        self._unready: set[str] = set()
        # Nodes fenced off (`fence`): the gateway forwards nothing to instances there.
        self._lost: set[str] = set()

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[name]

    @contextlib.contextmanager
    def _drained(
        self, name: str, *, wait: bool = True, leaving: Iterable[str] = ()
    ) -> Iterator[None]:
        """The function's traffic goes through the gateway while the block runs
        (forwarded to its ready instances, not to `leaving`), whatever happens in
        it: a drain left on would hold the function off the warm path for good."""
        leaving = set(leaving)
        self._unready.update(leaving)
        try:
            if self.router is not None:
                self.router.drain(name, wait=wait)
            yield
        finally:
            if self.router is not None:
                self.router.undrain(name)
            self._unready.difference_update(leaving)

    # -- reading (blocking) ----------------------------------------------------

    def list(self) -> list[Function]:
        by_name: defaultdict[str, list[Instance]] = defaultdict(list)
        for instance in self.provider.instances():
            by_name[instance.spec.name].append(instance)
        return [function_of(found) for _, found in sorted(by_name.items())]

    def get(self, name: str) -> Function:
        return function_of(self._found(name))

    def _found(self, name: str) -> builtins.list[Instance]:
        found = self.provider.instances(name)
        if not found:
            raise FunctionNotFound(name)
        return found

    def _serving(self, name: str) -> Instance:
        return serving(self._found(name))

    # -- blocking sequences ------------------------------------------------------

    def deploy(self, spec: FunctionSpec) -> Function:
        """Start `spec` as new instances, ready and routed, then retire the older ones.

        As many replicas as run now (at least `min_scale`, at least one, at most
        `max_scale`) start beside the old ones (a surge of that many), so the
        function never serves with fewer."""
        spec = policy.effective(spec, self.settings, self.provider.engine_info())
        with self._lock(spec.name), self._using_secrets(spec):
            values = self._secret_values(spec)
            self._ensure_image(spec.image)
            current = self.provider.instances(spec.name)
            count = min(max(len(live(current)), spec.min_scale, 1), spec.max_scale)
            # The old instances keep theirs while the new ones start beside them.
            old = self.secrets.values(_secrets_of(current), missing_ok=True)
            self.provider.mount_secrets(spec.name, {**old, **values})
            new: builtins.list[Instance] = []
            # An update under traffic: the proxy routes each new instance as soon as it
            # runs, before it listens (its retries do not cover a POST, and a slow start
            # outlasts them), so the gateway takes the traffic meanwhile and forwards it
            # to the instances that answer, as for a scale-up.
            with self._drained(spec.name) if current else contextlib.nullcontext():
                try:
                    addresses = [self._start_new(spec, new) for _ in range(count)]
                    if self.router is not None:
                        self.router.routed(spec, addresses)
                except BaseException:
                    for instance in new:
                        self._discard(instance.id)
                    self._restore_route(current)
                    self.provider.mount_secrets(spec.name, old)
                    raise
                if current:
                    self._thaw(current)
                    self._replace(spec, addresses, [i.id for i in current])
                self._release(spec.name)
            self.provider.mount_secrets(spec.name, values)
            logger.info("deployed {} ({}) at {}", spec.name, spec.image, ", ".join(addresses))
            return self.get(spec.name)

    @contextlib.contextmanager
    def _using_secrets(self, spec: FunctionSpec) -> Iterator[None]:
        """While the block runs, the secrets `spec` lists count as in use."""
        with self._secrets_guard:
            self._deploying[spec.name] = frozenset(spec.secrets)
        try:
            yield
        finally:
            with self._secrets_guard:
                del self._deploying[spec.name]

    def _secret_values(self, spec: FunctionSpec) -> dict[str, bytes]:
        """The values of the secrets `spec` lists; InvalidSpec naming a missing one."""
        try:
            return self.secrets.values(spec.secrets)
        except SecretNotFound as exc:
            raise InvalidSpec(
                "secrets", f"no secret {exc.name!r}: create it first (faas secrets create)"
            ) from exc

    def _remount(self, spec: FunctionSpec) -> None:
        """Write the function's secrets again before an instance is made or started
        (its folder may have been lost with the state dir)."""
        if spec.secrets:
            values = self.secrets.values(spec.secrets, missing_ok=True)
            self.provider.mount_secrets(spec.name, values)

    def functions_using(self, secret: str) -> builtins.list[Function]:
        return [f for f in self.list() if secret in f.spec.secrets]

    def update_secret(self, secret: str, value: bytes) -> builtins.list[str]:
        """Store a new value and bring it to every function that lists the secret:
        in place where the provider can, else by replacing its instances (a rolling
        deploy, no request lost). The names of those functions."""
        with self._secrets_guard:  # a deploy checking it from now on reads the new value
            self.secrets.update(secret, value)
            deploying = {name for name, used in self._deploying.items() if secret in used}
        names = []
        # A deploy in flight may have read the old value: its lock waits for it to end.
        for name in sorted({f.spec.name for f in self.functions_using(secret)} | deploying):
            with self._lock(name):
                found = self.provider.instances(name)
                spec = serving(found).spec if found else None
                if spec is None or secret not in spec.secrets:
                    continue
                values = self.secrets.values(spec.secrets, missing_ok=True)
                seen = self.provider.mount_secrets(name, values)
            # A paused function is replaced too: its thawed processes would read the old value.
            if not seen and (live(found) or any(i.state is State.PAUSED for i in found)):
                self.deploy(spec)
            names.append(name)
        logger.info("updated secret {} (used by {})", secret, ", ".join(names) or "none")
        return names

    def remove_secret(self, secret: str) -> None:
        """Delete a secret no function lists, deployed or being deployed (else
        SecretInUse naming them)."""
        with self._secrets_guard:  # no deploy may check it meanwhile
            deployed = {f.spec.name for f in self.functions_using(secret)}
            deploying = {name for name, used in self._deploying.items() if secret in used}
            if deployed | deploying:
                raise SecretInUse(secret, sorted(deployed | deploying))
            self.secrets.remove(secret)
        self.provider.forget_secret(secret)
        logger.info("removed secret {}", secret)

    def _start_new(self, spec: FunctionSpec, started: builtins.list[Instance]) -> str:
        """Create and start one more instance of `spec` (recorded in `started`); its
        address. The gateway forwards to it only once it answers."""
        instance = self.provider.create(spec)
        started.append(instance)
        self._unready.add(instance.id)
        try:
            return self._start_and_wait(spec, instance.id)
        finally:
            self._unready.discard(instance.id)

    def _ensure_image(self, image: str) -> None:
        found = self.provider.image_labels(image)
        if found is None:
            for _ in self.provider.pull(image):
                pass
            found = self.provider.image_labels(image)
        if found is None:
            raise ImageNotFound(image, "not on the engine after the pull")
        policy.check_image_labels(image, found)

    def _replace(self, spec: FunctionSpec, addresses: Collection[str], old: Iterable[str]) -> None:
        """Retire the old instances once `addresses` serve, losing no request."""
        if self.router is None:
            for instance_id in old:
                self._retire(instance_id)
            return
        # While the old ones stop, the gateway takes the traffic and forwards
        # it to the new instances; the proxy returns to the warm path once it
        # balances over the new instances alone.
        leaving = set(old)
        with self._drained(spec.name, leaving=leaving):
            for instance_id in leaving:
                self._retire(instance_id)
            self.router.routed(spec, addresses, only=True)

    def remove(self, name: str) -> None:
        with self._lock(name):
            found = self.provider.instances(name)
            if not found:
                raise FunctionNotFound(name)
            self._thaw(found)
            for instance in found:
                self._retire(instance.id)
            self.provider.mount_secrets(name, {})
            if self.router is not None:
                self.router.unrouted(name)
            self._release(name)
            logger.info("removed {}", name)

    def start(self, name: str, times: StartTimes | None = None) -> Function:
        """Start a stopped function; return once it answers (the proxy may lag)."""
        with self._lock(name):
            return self._start_serving(name, times)

    def _start_serving(self, name: str, times: StartTimes | None) -> Function:
        """`start` (or resume, when paused), the function's lock held."""
        found = self._found(name)
        paused = [i for i in found if i.state is State.PAUSED]
        if paused:
            return self._resume(name, found, times or StartTimes())
        instance = serving(found)
        if instance.state is State.INVALID:
            raise DeployFailed(name, instance.reason, Cause.INVALID)
        self._remount(instance.spec)
        # The proxy routes a container as soon as it runs, before it
        # listens: keep its traffic on the gateway (which waits for
        # readiness) until it answers. No need to wait for the drain: the
        # container's own route comes after its start, later than this.
        with self._drained(name, wait=False):
            try:
                self._start_and_wait(instance.spec, instance.id, times)
            except DeployFailed:
                self._stop_failed(name, instance.id)
                raise
        return self.get(name)

    def finish_start(self, name: str) -> Function:
        """Wait, behind a drain, for a running instance that does not answer yet
        (a start the gateway did not see through: it crashed mid-wake). The proxy
        routes a container as soon as it runs, so without the drain its callers
        would get errors until it listens."""
        with self._lock(name):
            instance = self._serving(name)
            with self._drained(name):
                try:
                    self._wait_ready(instance.spec, instance.id, StartTimes())
                except DeployFailed:
                    self._stop_failed(name, instance.id)
                    raise
            return self.get(name)

    def stop(self, name: str) -> None:
        """Stop every running (or paused) instance behind a drain: requests that
        arrive meanwhile go to the gateway, which waits, then wakes the function.
        One stopped instance stays (the next wake starts it); the others go."""
        with self._lock(name):
            self._stop(name)

    def _stop(self, name: str) -> None:
        """`stop`, the function's lock held."""
        with self._drained(name):
            found = self.provider.instances(name)
            self._thaw(found)  # SIGTERM reaches a frozen process only once it is thawed
            found = self.provider.instances(name)
            keep = serving(found) if found else None
            for instance in found:
                if instance is keep:
                    if instance.state in (State.RUNNING, State.STARTING):
                        self.provider.stop(instance.id, self.settings.stop_timeout)
                else:
                    self._retire(instance.id)
            if self.router is not None:
                self.router.unrouted(name)
            self._release(name)

    def pause(self, name: str) -> Function:
        """Freeze the running replicas of `name`, memory kept, behind a drain that
        stays until it leaves the paused tier; then, if more than FAAS_MAX_PAUSED
        functions are paused, stop the ones paused the longest."""
        with self._lock(name):
            running = _ready(self._found(name))
            if running:
                self._pause(name, running)
        self._evict()
        return self.get(name)

    def _pause(self, name: str, running: builtins.list[Instance]) -> None:
        held = name in self._paused
        self._paused[name] = time.monotonic()
        try:
            if self.router is not None and not held:
                # Wait for it: a request the proxy sent to a frozen container would hang.
                self.router.drain(name)
            for instance in running:
                self._freeze(instance.id)
        except BaseException:
            with contextlib.suppress(FaasError):
                self._thaw(self.provider.instances(name))
            self._release(name)
            raise
        logger.info("paused {} ({} replicas)", name, len(running))

    def _freeze(self, instance_id: str) -> None:
        """Pause one instance; try again when the freezer gives up: runc fails with
        "unable to freeze" when the cgroup does not settle in time, as on a busy host."""
        for attempt in range(PAUSE_ATTEMPTS):
            try:
                self.provider.pause(instance_id)
                return
            except ProviderError as exc:
                if attempt == PAUSE_ATTEMPTS - 1:
                    raise
                logger.info("pause of {} failed, trying again: {}", instance_id[:12], exc)
                time.sleep(0.05)

    def _evict(self) -> None:
        """Stop the functions paused the longest, beyond FAAS_MAX_PAUSED."""
        for name in policy.evictions(dict(self._paused), self.settings.max_paused):
            with self._lock(name):
                if name not in self._paused:  # resumed or stopped meanwhile
                    continue
                self._stop(name)
            self.metrics.scale_downs.labels("evicted").inc()
            self.metrics.scale_events.labels("down", "evicted").inc()
            logger.info(
                "stopped {}: paused the longest, beyond FAAS_MAX_PAUSED={}",
                name,
                self.settings.max_paused,
            )

    def _resume(self, name: str, found: builtins.list[Instance], times: StartTimes) -> Function:
        """Thaw the paused replicas; once they answer, the proxy may route to them
        again (the gateway forwards whatever the drain sent it meanwhile)."""
        paused = [i for i in found if i.state is State.PAUSED]
        began = time.monotonic()
        for instance in paused:
            self.provider.unpause(instance.id)
        times.started = time.monotonic() - began
        try:
            for instance in paused:
                # A thawed server answers at once: probe first, ask the engine only if not.
                address, path = instance.address, instance.spec.health_path
                if not (address and self.probe(address, path)):
                    self._wait_ready(instance.spec, instance.id, times)
        except DeployFailed:
            for instance in paused:
                self._stop_failed(name, instance.id)
            self._release(name)
            raise
        times.ready = time.monotonic() - began - times.started
        self._release(name)
        # What the engine would list now, without asking it (a list costs the wait ~5 ms).
        thawed = {i.id for i in paused}
        now = [replace(i, state=State.RUNNING) if i.id in thawed else i for i in found]
        return function_of(now)

    def _thaw(self, instances: Iterable[Instance]) -> None:
        for instance in instances:
            if instance.state is State.PAUSED:
                self.provider.unpause(instance.id)

    def _release(self, name: str) -> None:
        """The function left the paused tier: drop the drain its pause held."""
        if self._paused.pop(name, None) is not None and self.router is not None:
            self.router.undrain(name)

    def paused(self) -> builtins.list[str]:
        """The functions this gateway holds paused."""
        return sorted(self._paused)

    def scale_to(self, name: str, replicas: int, reason: str = "explicit") -> Function:
        """Run exactly `replicas` (>= 1) ready instances of `name`.

        More: the new ones start beside the others and join the proxy's service
        once they answer; each must fit into the host's memory beside what the
        running functions may use (else NoRoom). Fewer: the oldest leave the
        proxy's service (a drain) before they get SIGTERM, and finish their
        requests in flight."""
        with self._lock(name):
            return self._scale_to(name, replicas, reason)

    def try_scale_to(self, name: str, replicas: int, reason: str) -> Function | None:
        """`scale_to` a running function, or nothing (None) while another sequence
        holds it or once it is no longer running: the autoscaler looks again next
        round rather than queue behind a deploy or start what just stopped."""
        lock = self._lock(name)
        if not lock.acquire(blocking=False):
            return None
        try:
            if not _ready(self.provider.instances(name)):
                return None
            return self._scale_to(name, replicas, reason)
        finally:
            lock.release()

    def _scale_to(self, name: str, replicas: int, reason: str) -> Function:
        first = self._serving(name)
        if first.state is State.INVALID:
            raise DeployFailed(name, first.reason, Cause.INVALID)
        if not _ready(self._found(name)):
            self._start_serving(name, None)
        found = self._found(name)
        running = _ready(found)
        for other in found:  # died, stopped, restarting or never started: its place is taken
            if other not in running:
                self._retire(other.id)
        spec = serving(running).spec
        if replicas > len(running):
            self.metrics.scale_events.labels("up", reason).inc()
            self._scale_up(spec, running, replicas - len(running))
        elif replicas < len(running):
            self.metrics.scale_events.labels("down", reason).inc()
            self._scale_down(spec, running, len(running) - replicas)
        return self.get(name)

    def _scale_up(self, spec: FunctionSpec, running: builtins.list[Instance], more: int) -> None:
        """Start `more` replicas at once (as many as fit into memory, else NoRoom),
        the function drained meanwhile: the proxy routes a new replica as soon as it
        runs, before it listens, so the gateway takes the traffic and forwards it to
        the replicas that answer, a new one as soon as it does."""
        engine = self.provider.engine_info()
        limit = memory_bytes(spec.resources.memory or self.settings.default_memory)
        used = sum(
            memory_bytes(i.spec.resources.memory or self.settings.default_memory)
            for i in live(self.provider.instances())
        )
        fitting = 0
        while fitting < more and policy.fits(limit, used + fitting * limit, engine.memory_bytes):
            fitting += 1
        if not fitting:
            raise NoRoom(spec.name, limit, engine.memory_bytes - used)
        created: builtins.list[Instance] = []
        self._remount(spec)
        with self._drained(spec.name):
            try:
                for _ in range(fitting):
                    created.append(self.provider.create(spec))
                self._unready.update(i.id for i in created)
                with ThreadPoolExecutor(max_workers=fitting) as pool:
                    failures = [
                        exc
                        for exc in pool.map(lambda i: self._started(spec, i.id), created)
                        if exc is not None
                    ]
            except BaseException:
                for instance in created:
                    self._discard(instance.id)
                raise
            finally:
                self._unready.difference_update(i.id for i in created)
            if len(failures) < len(created) and self.router is not None:
                addresses = [i.address for i in _ready(self._found(spec.name)) if i.address]
                self.router.routed(spec, addresses)
        logger.info(
            "{}: {} -> {} replicas", spec.name, len(running), len(running) + fitting - len(failures)
        )
        if failures:
            raise failures[0]
        if fitting < more:
            raise NoRoom(spec.name, limit, engine.memory_bytes - used - fitting * limit)

    def _started(self, spec: FunctionSpec, instance_id: str) -> Exception | None:
        """Start one new replica; once it answers, the gateway may forward to it.
        What went wrong, if it did (the replica is gone then)."""
        try:
            self._start_and_wait(spec, instance_id)
        except Exception as exc:
            self._discard(instance_id)
            return exc
        self._unready.discard(instance_id)
        return None

    def _scale_down(self, spec: FunctionSpec, running: builtins.list[Instance], fewer: int) -> None:
        leaving, staying = running[:fewer], running[fewer:]
        with self._drained(spec.name, leaving=[i.id for i in leaving]):
            for instance in leaving:
                self._retire(instance.id)
            if self.router is not None:
                self.router.routed(spec, [i.address for i in staying if i.address], only=True)
        logger.info("{}: {} -> {} replicas", spec.name, len(running), len(staying))

    def _start_and_wait(
        self, spec: FunctionSpec, instance_id: str, times: StartTimes | None = None
    ) -> str:
        """Start the instance and return its address once it answers HTTP."""
        times = times or StartTimes()
        began = time.monotonic()
        self.provider.start(instance_id)
        times.started = time.monotonic() - began
        return self._wait_ready(spec, instance_id, times)

    def _wait_ready(self, spec: FunctionSpec, instance_id: str, times: StartTimes) -> str:
        """The running instance's address once it answers HTTP (DeployFailed if it
        exits first or does not answer within the ready timeout)."""
        started = time.monotonic()
        deadline = started + self.settings.ready_timeout
        address: str | None = None
        probes = 0
        while True:
            if probes % INSPECT_EVERY == 0 or address is None:
                try:
                    instance = self.provider.inspect(instance_id)
                except FunctionNotFound as exc:  # removed under our feet (by hand?)
                    raise DeployFailed(spec.name, "its container vanished", Cause.ENGINE) from exc
                if instance.state in (State.FAILED, State.STOPPED):
                    cause = Cause.OOM if instance.oom_killed else Cause.EXITED
                    raise DeployFailed(
                        spec.name, instance.reason, cause, self.provider.tail(instance_id)
                    )
                address = instance.address
            probes += 1
            if address and self.probe(address, spec.health_path):
                times.ready = time.monotonic() - started
                return address
            if time.monotonic() > deadline:
                raise DeployFailed(
                    spec.name,
                    f"no HTTP answer on port {spec.port} within {self.settings.ready_timeout:g}s",
                    Cause.TIMEOUT,
                    self.provider.tail(instance_id),
                )
            time.sleep(PROBE_PAUSE)

    def _stop_failed(self, name: str, instance_id: str) -> None:
        """Leave a function that failed to start stopped, not crash-looping, and
        unrouted, so the next request goes to the gateway and tries again."""
        self.provider.stop(instance_id, 0)
        if self.router is not None:
            try:
                self.router.unrouted(name)
            except FaasError as exc:
                logger.warning("{} still routed after a failed start: {}", name, exc)

    def _retire(self, instance_id: str) -> None:
        """Stop gracefully (in-flight requests finish), then delete."""
        self.provider.stop(instance_id, self.settings.stop_timeout)
        self.provider.remove(instance_id)

    def _discard(self, instance_id: str) -> None:
        try:
            self.provider.remove(instance_id)
        except FaasError as exc:
            logger.warning("could not remove failed instance {}: {}", instance_id[:12], exc)

    def _restore_route(self, current: builtins.list[Instance]) -> None:
        """After a failed update, wait until the proxy forgets the discarded instances."""
        addresses = [i.address for i in live(current) if i.address]
        if self.router is None or not addresses:
            return
        spec = serving(current).spec
        try:
            self.router.routed(spec, addresses, only=True)
        except FaasError as exc:
            logger.warning("route of {} not restored: {}", spec.name, exc)

    def fence(self, node: str, lost: Callable[[], bool]) -> bool:
        """Keep requests off the instances on `node`, which stopped answering, while
        `lost()` and until the engine has moved them elsewhere; True when it ended
        because the node answers again.

        Each function with ready replicas both there and on other nodes is drained
        (looked at again every FENCE_POLL seconds: a replica may start elsewhere
        meanwhile): the gateway forwards its requests to the others (`address`),
        until the engine has moved the lost replicas and the proxy no longer
        routes to them. A function whose every replica is there is left alone:
        nothing else could answer, and the node may yet come back."""
        self._lost.add(node)
        fenced: dict[str, set[str]] = {}  # function -> its lost addresses
        began = time.monotonic()
        try:
            with contextlib.ExitStack() as drains:
                while lost() and self._fence_more(node, fenced, drains):
                    time.sleep(FENCE_POLL)
                if not lost():
                    logger.info("node {} answers again", node)
                    return True
                for name, addresses in fenced.items():
                    self._forget_route(name, addresses)
            if fenced:
                logger.info(
                    "node {}: its replicas moved; {} back on the proxy after {:.1f} s",
                    node,
                    ", ".join(sorted(fenced)),
                    time.monotonic() - began,
                )
            return False
        finally:
            self._lost.discard(node)

    def _fence_more(
        self, node: str, fenced: dict[str, set[str]], drains: contextlib.ExitStack
    ) -> bool:
        """One look at a lost node: drain the functions that have replicas there and
        elsewhere, unless `fenced` already; False once no replica is left there."""
        try:
            there = self._on_lost_node(node)
        except FaasError as exc:  # the manager may be busy with the loss: hold on
            logger.warning("node {}: cannot list its replicas: {}", node, exc)
            return True
        for name, (addresses, elsewhere) in there.items():
            if name in fenced:
                fenced[name] |= addresses
            elif elsewhere:
                logger.warning(
                    "node {} lost: {} forwarded by the gateway until its replicas move",
                    node,
                    name,
                )
                drains.enter_context(self._drained(name, wait=False))
                fenced[name] = set(addresses)
        return bool(there)

    def _on_lost_node(self, node: str) -> dict[str, tuple[set[str], bool]]:
        """Function -> (addresses of its ready replicas on `node`, whether it has
        ready replicas on nodes not lost too), for the functions with some there."""
        by_name: defaultdict[str, builtins.list[Instance]] = defaultdict(builtins.list)
        for instance in self.provider.instances():
            if instance.state is State.RUNNING and instance.address:
                by_name[instance.spec.name].append(instance)
        return {
            name: (
                {i.address for i in found if i.address and i.node == node},
                any(i.node not in self._lost for i in found),
            )
            for name, found in by_name.items()
            if any(i.node == node for i in found)
        }

    def _forget_route(self, name: str, addresses: Collection[str]) -> None:
        if self.router is None:
            return
        try:
            self.router.unrouted(name, addresses)
        except FaasError as exc:
            logger.warning("the proxy still routes {} to a lost node: {}", name, exc)

    # -- waking and draining, for the requests that wait -------------------------

    async def address(self, fn: Function) -> tuple[str, float | None]:
        """Where to send a request for `fn` now, and the wake's duration if it had to wait.

        `fn` is the caller's fresh view of the function; it is read again only when
        a scale-down finished meanwhile."""
        name = fn.spec.name
        drained = False
        while (draining := self._draining.get(name)) is not None:
            await draining.wait()
            drained = True
        began = time.monotonic()
        if name in self._waking:  # join the start in flight; no need to ask the engine
            return await self.wake(name), time.monotonic() - began
        if drained:
            fn = await run_in_threadpool(self.get, name)
        leaving = {i.address for i in fn.replicas if i.id in self._unready}
        lost = {i.address for i in fn.replicas if i.node in self._lost}
        ready = [a for a in fn.addresses if a not in leaving]
        # A lost node's replicas only when there is nothing else: they may yet answer.
        addresses = [a for a in ready if a not in lost] or ready
        if addresses:
            return random.choice(addresses), None  # noqa: S311 - balancing, not secrets
        address = await self.wake(name)
        return address, time.monotonic() - began

    def waking(self, name: str) -> bool:
        return name in self._waking

    async def wake(self, name: str) -> str:
        """Start `name` once for every caller waiting at the same time; its address."""
        future = self._waking.get(name) or self._single_flight(name, self._wake(name))
        # shield: a caller that goes away must not cancel the others' start.
        fn = await asyncio.shield(future)
        assert fn.address is not None
        return fn.address

    def _single_flight(
        self, name: str, start: Coroutine[object, object, Function]
    ) -> asyncio.Future[Function]:
        """Run `start` as the one start of `name` that requests join while it lasts."""
        future = asyncio.ensure_future(start)
        self._waking[name] = future
        future.add_done_callback(lambda _: self._waking.pop(name, None))
        return future

    async def recover(self) -> builtins.list[str]:
        """At the gateway's start: finish, behind a drain, the starts of running
        functions that do not answer yet; returns their names."""
        try:
            functions = await run_in_threadpool(self.list)
        except FaasError:
            if self.router is not None:
                self.router.drain_only(())
            raise
        # The paused functions' drains, rebuilt from the engine (the gateway may have
        # crashed while they were paused); when each was paused is unknown now.
        now = time.monotonic()
        self._paused = {f.spec.name: now for f in functions if f.state is State.PAUSED}
        if self.router is not None:
            self.router.drain_only(list(self._paused))
        if self._paused:
            logger.info("paused: {}", ", ".join(sorted(self._paused)))
        unfinished = []
        for fn in functions:
            name = fn.spec.name
            if fn.state is not State.RUNNING or not fn.address or name in self._waking:
                continue
            if await run_in_threadpool(self.probe, fn.address, fn.spec.health_path):
                continue
            logger.info("{} runs but does not answer yet: finishing its start", name)
            self._single_flight(name, self._finish(name)).add_done_callback(_retrieved)
            unfinished.append(name)
        return unfinished

    async def _finish(self, name: str) -> Function:
        try:
            return await run_in_threadpool(self.finish_start, name)
        except DeployFailed as exc:
            logger.warning("{} did not finish starting: {}", name, exc.reason)
            self.metrics.wake_failures.labels(exc.cause).inc()
            raise WakeFailed(name, exc.reason, exc.cause) from exc

    async def _wake(self, name: str) -> Function:
        began = time.monotonic()
        times = StartTimes()
        resuming = name in self._paused
        try:
            fn = await run_in_threadpool(self.start, name, times)
        except DeployFailed as exc:
            logger.warning("wake of {} failed: {}", name, exc.reason)
            self.metrics.wake_failures.labels(exc.cause).inc()
            raise WakeFailed(name, exc.reason, exc.cause) from exc
        except ProviderError:
            self.metrics.wake_failures.labels(Cause.ENGINE).inc()
            raise
        took = (time.monotonic() - began) * 1000
        if resuming:
            self.resumes[name] += 1
            self.metrics.resumes.labels(name).inc()
            logger.info("resumed {} in {:.0f} ms", name, took)
            return fn
        self.starts[name] += 1
        self.metrics.wakes.labels(name).inc()
        self.metrics.wake_phase.labels("start").observe(times.started)
        self.metrics.wake_phase.labels("ready").observe(times.ready)
        logger.info("woke {} in {:.0f} ms", name, took)
        return fn

    async def scale_down(self, name: str, reason: str = "explicit", *, pause: bool = False) -> None:
        """Stop (or `pause`) `name` without failing a request that arrives meanwhile:
        such requests wait, then wake (or resume) it.

        `reason` ("idle" or "explicit") labels the scale-down metric."""
        if name in self._draining:
            await self._draining[name].wait()
            return
        done = asyncio.Event()
        self._draining[name] = done
        try:
            if pause:
                await run_in_threadpool(self.pause, name)
                self.metrics.pauses.labels(reason).inc()
                return
            await run_in_threadpool(self.stop, name)
            self.metrics.scale_downs.labels(reason).inc()
            self.metrics.scale_events.labels("down", reason).inc()
            logger.info("scaled {} to zero ({})", name, reason)
        finally:
            del self._draining[name]
            done.set()

    async def scale(self, fn: Function, replicas: int) -> None:
        """`faas scale`: to zero through a drain, or wake it and run `replicas`."""
        name = fn.spec.name
        if replicas == 0:
            if fn.state is not State.STOPPED:
                await self.scale_down(name)
            return
        if not fn.addresses:
            await self.wake(name)
        await run_in_threadpool(self.scale_to, name, replicas)

    def draining(self, name: str) -> bool:
        return name in self._draining


def _secrets_of(instances: Iterable[Instance]) -> set[str]:
    return {name for i in instances for name in i.spec.secrets}


def _ready(instances: builtins.list[Instance]) -> builtins.list[Instance]:
    """The running instances, oldest first (a starting or restarting one is not a replica)."""
    return [i for i in live(instances) if i.state is State.RUNNING]


def _retrieved(future: asyncio.Future[Function]) -> None:
    """Mark a background start's failure as seen (it was logged and counted)."""
    if not future.cancelled():
        future.exception()
