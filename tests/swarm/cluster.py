"""A Docker Swarm of several nodes on one machine, for tests and the bench.

Each node is an extra `dockerd` in a network namespace of its own, entered
with `nsenter` (`ip netns exec` remounts /sys and hides the cgroup mounts:
dockerd then fails with "Devices cgroup isn't mounted"), with its own data
and exec roots, pid file, socket and config file. The machine's main dockerd
is never touched.

    host ── <tag>-h ─┐                       one /24 (10.231.N.0)
                     │  switch namespace <tag>-sw: a bridge, no firewall
    node <tag>-n1 ───┤  (the host's br_netfilter would send bridged frames
    node <tag>-n2 ───┤  through its FORWARD chain, policy DROP)
    node <tag>-n3 ───┘

A registry (Debian's `docker-registry`) listens on the host's end
(10.231.N.1), so every node pulls the same images; the nodes trust it as an
insecure registry. n1 is the manager, the others workers; node i carries the
label `faas.test.node=n<i>`.

`python -m tests.swarm.cluster down-stale` removes what a killed run left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

STATE = Path("/run/faas-swarm")  # one JSON file per live cluster: what to tear down
ROOTS = Path("/var/lib/faas-swarm")  # the nodes' data roots (overlay2 needs a real fs)
PREFIX = "fs"
REGISTRY_PORT = 5000
# Overlay and bridge networks inside the nodes: away from the host's own ranges.
NODE_POOL = "10.232.0.0/16"
SWARM_POOL = "10.233.0.0/16"


def sh(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def _free_subnet() -> int:
    used = sh("ip", "-4", "addr")
    for third in [secrets.randbelow(200) + 20 for _ in range(50)]:
        if f"10.231.{third}." not in used:
            return third
    raise RuntimeError("no free 10.231.N.0/24 subnet")


def _wait(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Node:
    name: str  # n1, n2, ...
    netns: str
    ip: str
    root: Path  # data root and log
    run: Path  # exec root, pid file, socket
    pid: int = 0

    @property
    def socket(self) -> str:
        return f"unix://{self.run}/docker.sock"

    def docker(self, *argv: str, check: bool = True) -> str:
        return sh("docker", "-H", self.socket, *argv, check=check)

    def answers(self) -> bool:
        return (
            subprocess.run(
                ["docker", "-H", self.socket, "version"], capture_output=True, check=False
            ).returncode
            == 0
        )


@dataclass
class Cluster:
    tag: str
    third: int
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    registry_pid: int = 0
    owner: int = field(default_factory=os.getpid)
    # The daemons and the registry this process started, to reap them.
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @classmethod
    def new(cls, size: int = 3) -> Cluster:
        tag = PREFIX + secrets.token_hex(2)
        c = cls(tag=tag, third=_free_subnet(), size=size)
        for i in range(1, size + 1):
            c.nodes.append(
                Node(
                    name=f"n{i}",
                    netns=f"{tag}-n{i}",
                    ip=c.ip(10 + i),
                    root=ROOTS / tag / f"n{i}",
                    # Named by the node's hostname: FAAS_SWARM_DOCKER_SOCKET names
                    # each node's socket with Swarm's {{.Node.Hostname}} template.
                    run=Path("/run") / tag / f"{tag}-n{i}",
                )
            )
        return c

    def ip(self, last: int) -> str:
        return f"10.231.{self.third}.{last}"

    @property
    def registry(self) -> str:
        """host:port of the registry, as every node (and the host) reaches it."""
        return f"{self.ip(1)}:{REGISTRY_PORT}"

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def sockets(self) -> str:
        """Every node's Docker socket, as a Swarm mount template (a mount's source is
        read by the node's dockerd: they all share this machine's file system)."""
        return f"/run/{self.tag}/{{{{.Node.Hostname}}}}/docker.sock"

    @property
    def state_file(self) -> Path:
        return STATE / f"{self.tag}.json"

    def _save(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        data = {
            "tag": self.tag,
            "third": self.third,
            "size": self.size,
            "owner": self.owner,
            "registry_pid": self.registry_pid,
            "nodes": [
                {"name": n.name, "netns": n.netns, "ip": n.ip, "root": str(n.root),
                 "run": str(n.run), "pid": n.pid}
                for n in self.nodes
            ],
        }  # fmt: skip
        self.state_file.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Cluster:
        data = json.loads(path.read_text())
        nodes = [
            Node(n["name"], n["netns"], n["ip"], Path(n["root"]), Path(n["run"]), n["pid"])
            for n in data["nodes"]
        ]
        return cls(
            tag=data["tag"],
            third=data["third"],
            size=data["size"],
            nodes=nodes,
            registry_pid=data["registry_pid"],
            owner=data["owner"],
        )

    # -- up ---------------------------------------------------------------

    def up(self) -> None:
        """Network, registry, daemons, swarm; torn down again if any step fails."""
        self._save()  # first: a failure halfway is cleaned up from this record
        try:
            self._network()
            self._start_registry()
            for node in self.nodes:
                self._start_daemon(node)
            for node in self.nodes:
                _wait(node.answers, f"dockerd of {node.netns}")
            self._form_swarm()
        except BaseException:
            self.down()
            raise

    def _network(self) -> None:
        sw = f"{self.tag}-sw"
        sh("ip", "netns", "add", sw)
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        sh("ip", "-n", sw, "link", "set", "lo", "up")
        # The host's end, where the registry listens.
        host, host_peer = f"{self.tag}-h", f"{self.tag}-hs"
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", host_peer, "netns", sw)
        sh("ip", "addr", "add", f"{self.ip(1)}/24", "dev", host)
        sh("ip", "link", "set", host, "up")
        sh("ip", "-n", sw, "link", "set", host_peer, "master", "br0", "up")
        for node in self.nodes:
            sh("ip", "netns", "add", node.netns)
            inner, outer = f"{self.tag}-{node.name}i", f"{self.tag}-{node.name}s"
            sh("ip", "link", "add", outer, "netns", sw, "type", "veth", "peer", "name", inner,
               "netns", node.netns)  # fmt: skip
            sh("ip", "-n", sw, "link", "set", outer, "master", "br0", "up")
            sh("ip", "-n", node.netns, "link", "set", "lo", "up")
            sh("ip", "-n", node.netns, "link", "set", inner, "name", "eth0")
            sh("ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            # No default route: the nodes reach each other and the registry on
            # this link, and nothing else.
            sh("ip", "-n", node.netns, "link", "set", "eth0", "up")

    def _start_registry(self) -> None:
        root = ROOTS / self.tag / "registry"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.registry}'}}\n"
        )
        with (root / "registry.log").open("ab") as log:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.registry_pid = proc.pid
        self._save()

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://{self.registry}/v2/", timeout=1):
                    return True
            except OSError:
                return False

        _wait(answers, "the registry", 20)

    def _start_daemon(self, node: Node) -> None:
        node.root.mkdir(parents=True, exist_ok=True)
        node.run.mkdir(parents=True, exist_ok=True)
        config = node.root / "daemon.json"
        # Its own config file: /etc/docker/daemon.json belongs to the main dockerd.
        config.write_text(json.dumps({"insecure-registries": [self.registry]}))
        # A UTS namespace too, for a hostname of its own: Swarm names nodes by it.
        argv = [
            "unshare", "--uts", "sh", "-c", f'hostname {node.netns} && exec "$@"', "sh",
            "nsenter", f"--net=/var/run/netns/{node.netns}",
            "dockerd",
            "--config-file", str(config),
            "--data-root", str(node.root / "data"),
            "--exec-root", str(node.run / "exec"),
            "--pidfile", str(node.run / "docker.pid"),
            "-H", node.socket,
            "--default-address-pool", f"base={NODE_POOL},size=24",
            "--log-level", "warn",
        ]  # fmt: skip
        with (node.root / "dockerd.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.procs.append(proc)
        node.pid = proc.pid  # sh and nsenter exec dockerd: the same process
        self._save()

    def _form_swarm(self) -> None:
        m = self.manager
        # Docker's default heartbeat (5 s), as users have it: a lost node is noticed
        # by the gateway long before the manager (faas/nodes.py).
        m.docker("swarm", "init", "--advertise-addr", m.ip, "--default-addr-pool", SWARM_POOL)
        token = m.docker("swarm", "join-token", "-q", "worker")
        for node in self.nodes[1:]:
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.ip,
                        f"{m.ip}:2377")  # fmt: skip
        for node in self.nodes:
            node_id = node.docker("info", "-f", "{{.Swarm.NodeID}}")
            m.docker("node", "update", "--label-add", f"faas.test.node={node.name}", node_id)
        _wait(lambda: self.ready_nodes() == self.size, "every node ready")

    def ready_nodes(self) -> int:
        out = self.manager.docker("node", "ls", "--format", "{{.Status}}", check=False)
        return out.split().count("Ready")

    # -- images -------------------------------------------------------------

    def push(self, image: str) -> str:
        """Copy a local image of the main engine into the registry; its name there."""
        remote = f"{self.registry}/{image}"
        sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false",
           f"docker-daemon:{image}", f"docker://{remote}")  # fmt: skip
        return remote

    # -- failures -------------------------------------------------------------

    def stop_daemon(self, node: Node) -> None:
        """The node goes away as a machine would: off the network first (packets to
        it are lost: nothing there answers, or refuses, again), then its dockerd and
        everything it ran, containers included, are killed."""
        sh("ip", "-n", f"{self.tag}-sw", "link", "set", f"{self.tag}-{node.name}s", "down")
        _kill_netns(node.netns)
        _wait(lambda: not _alive(node.pid), f"dockerd of {node.netns} gone", 30)

    def restart_daemon(self, node: Node) -> None:
        """Stop a node's dockerd gracefully (its containers stop) and start it again."""
        os.kill(node.pid, signal.SIGTERM)
        _wait(lambda: not _alive(node.pid), f"dockerd of {node.netns} to stop", 60)
        self._start_daemon(node)
        _wait(node.answers, f"dockerd of {node.netns}")

    # -- down -----------------------------------------------------------------

    def down(self) -> None:
        """Everything `up` made, whatever state it is in; never raises for what is gone."""
        for node in self.nodes:
            if node.pid and _alive(node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            while node.pid and _alive(node.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        for node in self.nodes:
            _kill_netns(node.netns)  # containers, shims, a dockerd that would not stop
        if self.registry_pid and _alive(self.registry_pid):
            os.kill(self.registry_pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)
        for base in (ROOTS / self.tag, Path("/run") / self.tag):
            _unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)
        for node in self.nodes:
            sh("ip", "netns", "del", node.netns, check=False)
        sh("ip", "netns", "del", f"{self.tag}-sw", check=False)
        sh("ip", "link", "del", f"{self.tag}-h", check=False)
        self.state_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(OSError):
        if "\nState:\tZ" in status.read_text():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _kill_netns(netns: str) -> None:
    """SIGKILL every process in the network namespace and every descendant of one
    (the containers, in namespaces of their own), until none is left."""
    for _ in range(50):
        pids = _descendants(int(p) for p in sh("ip", "netns", "pids", netns, check=False).split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _alive(pid)  # reaps our own children
        time.sleep(0.1)


def _descendants(roots: Iterable[int]) -> list[int]:
    """`roots` and all their descendants, read from /proc at once: a killed shim's
    children would be handed to init, out of reach."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _unmount_under(base: Path) -> None:
    mounts = sh("findmnt", "-rn", "-o", "TARGET", check=False).splitlines()
    for target in sorted((m for m in mounts if m.startswith(f"{base}/")), reverse=True):
        sh("umount", "-l", target, check=False)


@contextlib.contextmanager
def cluster(size: int = 3) -> Iterator[Cluster]:
    """A swarm of `size` nodes, torn down completely afterwards, whatever happens."""
    down_stale()
    c = Cluster.new(size)
    c.up()
    try:
        yield c
    finally:
        c.down()


def down_stale() -> None:
    """Tear down the clusters whose owning process is gone (a killed test run)."""
    for path in STATE.glob(f"{PREFIX}*.json") if STATE.exists() else []:
        c = Cluster.load(path)
        if not _alive(c.owner):
            c.down()


def main(argv: list[str]) -> int:
    if argv[:1] == ["down-stale"]:
        down_stale()
        return 0
    if argv[:1] == ["up"]:  # for a look by hand; `down TAG` ends it
        c = Cluster.new(int(argv[1]) if len(argv) > 1 else 3)
        c.owner = 1  # outlives this command
        c.up()
        print(c.tag, c.manager.socket, c.registry)
        return 0
    if argv[:1] == ["down"] and len(argv) == 2:
        Cluster.load(STATE / f"{argv[1]}.json").down()
        return 0
    print("usage: python -m tests.swarm.cluster up [N] | down TAG | down-stale", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
