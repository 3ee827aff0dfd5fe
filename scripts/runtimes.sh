#!/usr/bin/env bash
# Make the extra OCI runtimes crun and runsc (gVisor) available to the local
# Docker engine, then check that each runtime really starts a container.
# Safe to run again: it installs, mounts, writes and reloads only what is
# missing or different, so a second run changes nothing.
#
#   1. apt-get install crun / runsc when the binaries are not on PATH
#      (apt-get update only when apt knows no candidate or the install fails).
#      crun must install; runsc may fail to (then it is reported, not fatal).
#   2. crun refuses to run on a hybrid cgroup host ("cgroups in hybrid mode not
#      supported") while the cgroup v2 mount /sys/fs/cgroup/unified holds the
#      hugetlb controller. Mounting hugetlb as a v1 hierarchy moves it out of
#      v2. The mount does not survive a reboot: run this script again at boot.
#   3. Merge "runtimes": {"crun": ..., "runsc": ...} into /etc/docker/daemon.json
#      (other keys and runtimes are kept) and write the file only when it
#      changes. runsc gets "--network=host": on these machines gVisor's own
#      network stack refuses to start ("cannot run with network enabled in
#      root network namespace"); with it gVisor uses the container's network
#      namespace that Docker set up. A running dockerd reloads the runtimes on
#      SIGHUP (no restart, containers keep running); a stopped one reads the
#      file when scripts/engine.sh starts it.
#   4. Run one throwaway container per runtime (runc, crun, runsc) with --rm
#      and label faas.test=1, print the kernel it sees (`uname -r`; gVisor
#      reports its own 4.4.0) and the first kernel-log line (gVisor fakes one).
#      Exit 1 when runc or crun fails; a runsc failure is reported but does not
#      fail the script, because gVisor depends on host features (ptrace,
#      seccomp, namespaces) that some CI machines lack.
#
# Probe image: FAAS_PROBE_IMAGE, default faas/probe:busybox. The default is
# built here when missing, from Debian's static busybox in an otherwise empty
# image (~2 MB, `docker import`, no registry, no build step that itself runs a
# container), so the check works on a brand-new machine before
# scripts/images.sh has run. Any other image must exist locally and provide
# `sh` and `uname`.
#
# Needs root. Environment: FAAS_PROBE_IMAGE, DOCKER_DAEMON_JSON (default
# /etc/docker/daemon.json).
set -euo pipefail

DAEMON_JSON="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
DEFAULT_PROBE=faas/probe:busybox
PROBE_IMAGE="${FAAS_PROBE_IMAGE:-$DEFAULT_PROBE}"
RELOAD_TIMEOUT=30 # seconds for dockerd to answer / to show the new runtimes
RUN_TIMEOUT=60    # seconds for one probe container

log() { echo "runtimes: $*" >&2; }
die() {
  log "$*"
  exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (installs packages, mounts a cgroup, writes $DAEMON_JSON)"

# Everything we create is removed on exit, also on failure or Ctrl-C.
tmp="$(mktemp -d)"
probe_names=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ "${#probe_names[@]}" -gt 0 ]; then
    # --rm removes finished probes; this catches the ones a timeout interrupted.
    docker rm -f "${probe_names[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- 1. packages -------------------------------------------------------------

# apt_install PACKAGE... (refreshes the package lists only when needed)
# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

# A binary already on PATH (Debian's or an upstream build in /usr/local/bin)
# is used as it is; we only install what is missing.
missing=()
command -v crun >/dev/null 2>&1 || missing+=(crun)
# The default probe image needs a *static* busybox: a dynamic one (package
# `busybox`) would not run in an image without libc.
if [ "$PROBE_IMAGE" = "$DEFAULT_PROBE" ] && ! docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1 &&
  ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
  missing+=(busybox-static)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
# runsc is optional: Debian builds it for amd64 and arm64 only, and gVisor
# needs host features CI machines may lack. Without it we register crun only
# and report runsc as FAILED below.
if ! command -v runsc >/dev/null 2>&1; then
  (apt_install runsc) || log "warning: could not install runsc; continuing without gVisor"
fi
crun_path="$(command -v crun)"
runsc_path="$(command -v runsc || true)"

# --- 2. crun vs. hybrid cgroups ----------------------------------------------

# Only hybrid hosts (cgroup v1 hierarchies plus a v2 mount at .../unified) need
# this; on pure v1 or pure v2 hosts the controllers file does not exist there.
# Once hugetlb is mounted as v1 it disappears from the v2 controller list, so
# the check below is false on every later run and the step never repeats.
unified_ctrl=/sys/fs/cgroup/unified/cgroup.controllers
hugetlb_dir=/sys/fs/cgroup/hugetlb
if [ -r "$unified_ctrl" ] && grep -qw hugetlb "$unified_ctrl"; then
  if mountpoint -q "$hugetlb_dir"; then
    log "warning: $hugetlb_dir is mounted but hugetlb is still in cgroup v2; crun may refuse to run"
  else
    log "mounting the hugetlb cgroup v1 hierarchy at $hugetlb_dir (crun: no hybrid cgroup v2 controllers)"
    mkdir -p "$hugetlb_dir"
    # Fails (EBUSY) when some v2 cgroup has hugetlb enabled; crun's probe
    # below then reports the failure, so keep going.
    mount -t cgroup -o hugetlb cgroup "$hugetlb_dir" ||
      log "warning: could not mount hugetlb as cgroup v1; crun will probably fail"
  fi
fi

# --- 3. daemon.json ----------------------------------------------------------

# Prints "changed" or "unchanged". Compares parsed JSON, so a hand-formatted
# file that already says the right thing is left alone. Refuses to touch a
# file that is not valid JSON (dockerd would not start with it either).
merge_daemon_json() {
  python3 - "$DAEMON_JSON" "$crun_path" "$runsc_path" <<'PY'
import copy, json, os, sys, tempfile

path, crun, runsc = sys.argv[1:4]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    old = json.loads(text) if text.strip() else {}
except json.JSONDecodeError as e:
    sys.exit(f"runtimes: {path} is not valid JSON ({e}); fix it by hand, not overwriting it")
if not isinstance(old, dict) or not isinstance(old.get("runtimes", {}), dict):
    sys.exit(f"runtimes: {path}: expected a JSON object with an object under \"runtimes\"")

new = copy.deepcopy(old)
runtimes = new.setdefault("runtimes", {})
# Keep any extra settings already on our two entries; just fix the path.
entry = dict(runtimes.get("crun") or {})
entry["path"] = crun
runtimes["crun"] = entry
if runsc:  # empty when runsc could not be installed: leave any entry alone
    entry = dict(runtimes.get("runsc") or {})
    entry["path"] = runsc
    args = list(entry.get("runtimeArgs") or [])
    if "--network=host" not in args:
        # Other runsc flags (--platform=..., --debug...) stay; a different
        # --network=... would break containers here, so it is replaced.
        args = [a for a in args if not a.lstrip("-").startswith("network=")]
        args.append("--network=host")
    entry["runtimeArgs"] = args
    runtimes["runsc"] = entry

if new == old:
    print("unchanged")
    sys.exit(0)
directory = os.path.dirname(path) or "."
os.makedirs(directory, exist_ok=True)
mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644
# Write next to the target and rename: dockerd never reads a half-written file.
fd, tmp = tempfile.mkstemp(dir=directory, prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(new, f, indent=2)
    f.write("\n")
os.chmod(tmp, mode)
os.replace(tmp, path)
print("changed")
PY
}

# True when the running dockerd reports crun (and runsc, when installed)
# exactly as daemon.json configures them (path and runtimeArgs).
runtimes_live() {
  local live
  live="$(docker info --format '{{json .Runtimes}}' 2>/dev/null)" || return 1
  # shellcheck disable=SC2086 # ${runsc_path:+runsc} is one word or none
  python3 - "$DAEMON_JSON" "$live" crun ${runsc_path:+runsc} <<'PY'
import json, sys

want = json.load(open(sys.argv[1]))["runtimes"]
live = json.loads(sys.argv[2])
for name in sys.argv[3:]:
    got = live.get(name) or {}
    if got.get("path") != want[name]["path"] or (got.get("runtimeArgs") or []) != (
        want[name].get("runtimeArgs") or []
    ):
        sys.exit(1)
PY
}

# The dockerd the docker CLI talks to: the one in /var/run/docker.pid when
# that process is alive, else any dockerd.
dockerd_pid() {
  local pid
  pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    echo "$pid"
  else
    pidof -s dockerd || true
  fi
}

# wait_for SECONDS COMMAND...: poll COMMAND until it succeeds or time is up.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# shellcheck disable=SC2317 # called through wait_for
daemon_answers() { docker info >/dev/null 2>&1; }

state="$(merge_daemon_json)"
if [ "$state" = changed ]; then
  log "wrote $DAEMON_JSON: crun -> $crun_path${runsc_path:+, runsc -> $runsc_path --network=host}"
else
  log "$DAEMON_JSON already registers crun${runsc_path:+ and runsc}; not written"
fi

pid="$(dockerd_pid)"
if [ -z "$pid" ]; then
  log "dockerd is not running; it reads $DAEMON_JSON when it starts (scripts/engine.sh)."
  log "run this script again after that to check the runtimes"
  exit 0
fi

# Before dockerd has installed its SIGHUP handler (early startup) a HUP would
# kill it, so only signal a daemon that already answers. One that is just
# starting may have read daemon.json before we wrote it; the check below
# catches that too.
wait_for "$RELOAD_TIMEOUT" daemon_answers ||
  die "dockerd ($pid) is running but not answering after ${RELOAD_TIMEOUT}s"
# Also reload when the file was already right but the daemon still runs an
# older configuration (someone edited daemon.json without reloading).
if [ "$state" = changed ] || ! runtimes_live; then
  log "reloading dockerd ($pid) with SIGHUP"
  kill -HUP "$pid"
  if ! wait_for "$RELOAD_TIMEOUT" runtimes_live; then
    log "dockerd did not pick up the runtimes within ${RELOAD_TIMEOUT}s; its log says:"
    tail -n 20 /var/log/dockerd.log >&2 2>/dev/null || true
    exit 1
  fi
  log "dockerd now lists: $(docker info --format '{{json .Runtimes}}')"
fi

# --- 4. verify -----------------------------------------------------------------

if ! docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1; then
  [ "$PROBE_IMAGE" = "$DEFAULT_PROBE" ] ||
    die "probe image $PROBE_IMAGE is not present locally (build it, or unset FAAS_PROBE_IMAGE)"
  log "building $PROBE_IMAGE from the static busybox"
  busybox="$(dpkg -L busybox-static | grep -m1 '/bin/busybox$')"
  mkdir -p "$tmp/rootfs/bin"
  cp "$busybox" "$tmp/rootfs/bin/busybox"
  # Relative links, one per applet: `sh`, `uname`, `dmesg`... all just work.
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$tmp/rootfs/bin/$applet"
  done
  tar -C "$tmp/rootfs" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'LABEL faas.image=probe' \
    --change 'CMD ["/bin/sh"]' \
    - "$PROBE_IMAGE" >/dev/null
fi

# probe RUNTIME: run one container; sets probe_out (its output) and
# probe_err (docker's error), returns docker's status.
probe() {
  local rt="$1" name="faas-probe-$1-$$"
  probe_names+=("$name")
  probe_out="" probe_err=""
  if probe_out="$(timeout "$RUN_TIMEOUT" docker run --rm --name "$name" --label faas.test=1 \
    --runtime "$rt" "$PROBE_IMAGE" sh -c 'uname -r; dmesg 2>&1 | head -n 1' 2>"$tmp/err")"; then
    return 0
  else
    local rc=$?
    probe_err="$(tail -n 3 "$tmp/err")"
    [ "$rc" = 124 ] && probe_err="timed out after ${RUN_TIMEOUT}s. $probe_err"
    return "$rc"
  fi
}

host_kernel="$(uname -r)"
failed=()
for rt in runc crun runsc; do
  if [ "$rt" = runsc ] && [ -z "$runsc_path" ]; then
    echo "runtime runsc: FAILED: runsc is not installed"
    failed+=(runsc)
    continue
  fi
  start="$(date +%s%N)"
  if probe "$rt"; then
    ms=$((($(date +%s%N) - start) / 1000000))
    kernel="$(sed -n 1p <<<"$probe_out")"
    kmsg="$(sed -n 2p <<<"$probe_out")"
    echo "runtime $rt: OK (${ms} ms) uname -r: $kernel; kernel log: ${kmsg:-<empty>}"
    # Sanity: runc/crun share the host kernel, gVisor shows its own.
    if [ "$rt" = runsc ] && [ "$kernel" = "$host_kernel" ]; then
      log "warning: runsc container reports the host kernel; is it really sandboxed?"
    fi
  else
    echo "runtime $rt: FAILED: ${probe_err:-docker run exited non-zero}"
    case "$probe_err" in
      *"hybrid mode"*) log "hint: hugetlb is still a cgroup v2 controller; see step 2 above" ;;
      *"root network namespace"*) log "hint: runsc needs \"runtimeArgs\": [\"--network=host\"] in $DAEMON_JSON" ;;
    esac
    failed+=("$rt")
  fi
done

for rt in "${failed[@]}"; do
  if [ "$rt" != runsc ]; then
    die "runtime $rt does not work; failing"
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "runsc (gVisor) does not work on this machine; runc and crun do, so not failing"
fi
exit 0
