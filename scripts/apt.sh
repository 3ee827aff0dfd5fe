# shellcheck shell=bash
# apt_install PACKAGE...: install Debian packages quietly, without recommends.
# Refreshes the package lists first only when apt has no candidate for one of
# them (a fresh machine's lists are empty), and once more when the install
# fails (stale lists point at deleted .debs). Sourced by the scripts that
# install what they need; the caller defines log and die.
apt_install() {
  local p need_update=0
  command -v apt-get >/dev/null 2>&1 || die "need $* but apt-get is not available; install them by hand"
  for p in "$@"; do
    case "$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')" in
      "" | "(none)") need_update=1 ;;
    esac
  done
  export DEBIAN_FRONTEND=noninteractive
  if [ "$need_update" = 1 ]; then
    log "apt-get update"
    apt-get update -qq
  fi
  log "installing $*"
  if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    [ "$need_update" = 1 ] && die "apt-get install $* failed"
    log "install failed; refreshing package lists and retrying"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}
