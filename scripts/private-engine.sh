#!/usr/bin/env bash
# A private, second Docker engine for tests that restart or kill an engine: every path it uses is
# under DIR, and it runs in a network namespace and a mount namespace of its own, so the host's
# engine, its docker0 bridge, its iptables rules and the host's mount table are never touched.
#
#   private-engine.sh up      DIR [--live-restore] [--own-containerd] [--socket-activation]
#   private-engine.sh stop    DIR    SIGTERM to its dockerd (exactly the pid it started), wait for the exit
#   private-engine.sh kill    DIR    SIGKILL to its dockerd, wait for the exit
#   private-engine.sh start   DIR [--live-restore|--no-live-restore]   start its dockerd again
#   private-engine.sh restart DIR [--live-restore|--no-live-restore]   stop + start (as `systemctl restart docker`)
#   private-engine.sh down    DIR    stop everything it started, remove the namespaces and its state
#   private-engine.sh status  DIR    print what runs
#
# DIR: an existing directory under /tmp (or $TMPDIR), at most 64 characters (the engine's sockets
# live under it: containerd refuses a socket path over 104 bytes, and its longest is
# DIR/x/containerd/containerd.sock.ttrpc; dockerd then gives up only after a minute). Layout:
#   DIR/docker.sock  the API (DOCKER_HOST=unix://DIR/docker.sock)
#   DIR/dockerd.pid DIR/dockerd.log DIR/daemon.json (empty: /etc/docker/daemon.json is never read)
#   DIR/data         --data-root (images, containers, the managed containerd's root)
#   DIR/x            --exec-root (the managed containerd's socket and state, runc's state, netns files)
#   DIR/holder.pid   a `sleep` that holds the mount namespace (dockerd's mounts live in it only)
#   DIR/tmp          TMPDIR of dockerd and containerd (containerd's stack dumps)
#   DIR/options      the current mode (live-restore, own-containerd, socket-activation), kept across restarts
# --own-containerd: a containerd of its own (DIR/ctd.sock, DIR/containerd.pid), started and stopped by
#   this script and not by dockerd, as on hosts where containerd is a service of its own (docker-ce,
#   Debian's docker.io under systemd): it outlives a restart or a kill of dockerd. Without it, dockerd
#   runs its own ("managed") containerd, as scripts/docker-engine.sh does in CI.
# --socket-activation: the API socket is held by the namespace holder and handed to each dockerd
#   (-H fd://, LISTEN_FDS), as systemd's docker.socket does for docker-ce and Debian's docker.io: while
#   dockerd is down or restarting, a new connection is accepted and waits instead of being refused.
# Names outside DIR, all derived from DIR: the network namespace pe-<hash> (/run/netns/pe-<hash>)
# and the cgroup parent /pe-<hash> of its containers. `down` removes both. In its mount namespace a
# tmpfs hides the host's /run/containerd (dockerd would take a containerd socket there for its own).
set -euo pipefail

DOCKERD=/usr/sbin/dockerd
CONTAINERD=/usr/bin/containerd
MAX_DIR_LEN=64
PYTHON=/usr/bin/python3
# socket activation: the holder binds the API socket and keeps it (fd 3) while it sleeps ...
HOLD_SOCKET='
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[2])
os.chmod(sys.argv[2], 0o660)
s.listen(4096)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execvp("sleep", ["sleep", "infinity"])
'
# ... and each dockerd gets a copy of it (pidfd_getfd), as systemd hands docker.socket to dockerd
HAND_SOCKET='
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
fd = libc.syscall(438, pidfd, 3, 0)  # pidfd_getfd
if fd < 0:
    sys.exit("pidfd_getfd: " + os.strerror(ctypes.get_errno()))
os.dup2(fd, 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execvp(sys.argv[2], sys.argv[2:])  # nsenter execs dockerd: the same pid
'

die() { echo "private-engine: $*" >&2; exit 2; }
say() { echo "private-engine: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }

[ $# -ge 2 ] || usage
CMD=$1
shift
RAW_DIR=$1
shift
OPT_LIVE=""   # "", 1, 0
OPT_OWN=""
OPT_SA=""
for a in "$@"; do
  case "$a" in
    --live-restore) OPT_LIVE=1 ;;
    --no-live-restore) OPT_LIVE=0 ;;
    --own-containerd) OPT_OWN=1 ;;
    --socket-activation) OPT_SA=1 ;;
    *) die "unknown option $a" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "needs root (a dockerd, namespaces)"

# --- DIR: an existing directory under /tmp or $TMPDIR, every path built from it ---------------
if [ ! -d "$RAW_DIR" ] || [ -L "$RAW_DIR" ]; then die "$RAW_DIR is not an existing directory"; fi
DIR=$(realpath -e -- "$RAW_DIR")
case "$DIR" in *[!A-Za-z0-9._/-]*) die "$DIR: only letters, digits and ._/- please" ;; esac
allowed=0
for base in /tmp ${TMPDIR:+"$TMPDIR"}; do
  b=$(realpath -e -- "$base" 2>/dev/null) || continue
  [ "$b" != / ] || continue
  case "$DIR" in "$b"/?*) allowed=1 ;; esac
done
[ $allowed = 1 ] || die "$DIR is not under /tmp${TMPDIR:+ or $TMPDIR}: refused"
[ ${#DIR} -le $MAX_DIR_LEN ] || die "$DIR is longer than $MAX_DIR_LEN characters (containerd's sockets under it would pass 104 bytes)"

HASH=$(printf '%s' "$DIR" | sha256sum | cut -c1-10)
NAME=pe-$HASH                          # netns name and cgroup parent
NETNS=/run/netns/$NAME
SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
CONF=$DIR/daemon.json
DATA=$DIR/data
EXEC=$DIR/x
HOLDER_PIDFILE=$DIR/holder.pid
OPTIONS=$DIR/options
CTD_SOCK=$DIR/ctd.sock
CTD_PIDFILE=$DIR/containerd.pid
CTD_LOG=$DIR/containerd.log
CTD_CONF=$DIR/containerd.toml
MANAGED_CTD_PIDFILE=$EXEC/containerd/containerd.pid

# --- processes: only ever the ones whose command line names DIR ---------------------------------
cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }
# a process that exists and is not a zombie (a dead child its new parent has not reaped yet: kill -0
# still reaches it, and so does dockerd's own "is containerd still running" check)
alive() {
  local st
  [ -n "${1:-}" ] && st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}
# pid from a pidfile, if that process is alive and its command line holds the marker
pid_of() {  # pidfile marker
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  alive "$pid" || return 1
  case "$(cmdline "$pid")" in *"$2"*) echo "$pid" ;; *) return 1 ;; esac
}
dockerd_pid() { pid_of "$PIDFILE" "--pidfile $PIDFILE"; }
holder_pid() { pid_of "$HOLDER_PIDFILE" "sleep infinity"; }
own_ctd_pid() { pid_of "$CTD_PIDFILE" "--config $CTD_CONF"; }
managed_ctd_pid() { pid_of "$MANAGED_CTD_PIDFILE" "$EXEC/containerd"; }
wait_gone() {  # pid seconds
  local deadline=$((SECONDS + $2))
  while alive "$1"; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.05
  done
}
# the holder's mount namespace is ours only if it is not the host's
in_ns() {  # holder: run a command in the holder's network and mount namespaces
  local h=$1
  shift
  nsenter --target "$h" --mount --net -- "$@"
}

api_up() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://engine/_ping >/dev/null 2>&1; }
wait_api() {  # seconds [pid of the dockerd just started]
  local deadline=$((SECONDS + $1))
  until api_up; do
    if [ $SECONDS -ge "$deadline" ] || ! { dockerd_pid >/dev/null || alive "${2:-}"; }; then
      say "dockerd did not answer on $SOCK; the log's tail:"
      tail -n 25 "$LOG" >&2 || true
      return 1
    fi
    sleep 0.05
  done
}

read_options() {
  LIVE=0
  OWN=0
  SA=0
  # shellcheck disable=SC1090
  [ -f "$OPTIONS" ] && . "$OPTIONS"
  [ -z "$OPT_LIVE" ] || LIVE=$OPT_LIVE
  [ -z "$OPT_OWN" ] || OWN=$OPT_OWN
  [ -z "$OPT_SA" ] || SA=$OPT_SA
  printf 'LIVE=%s\nOWN=%s\nSA=%s\n' "$LIVE" "$OWN" "$SA" >"$OPTIONS"
}

namespaces_up() {
  if [ ! -e "$NETNS" ]; then
    ip netns add "$NAME"
  fi
  ip -n "$NAME" link set lo up
  if ! holder_pid >/dev/null; then
    # the mount namespace: a copy of the host's that receives the host's mounts (slave) and never
    # sends its own back; the sleep holds it between two dockerds. (Not `ip netns exec`: it mounts
    # a fresh /sys, and the cgroup v1 hierarchies under /sys/fs/cgroup vanish for dockerd.)
    if [ "$SA" = 1 ]; then
      rm -f "$SOCK"
      setsid nsenter --net="$NETNS" -- unshare --mount --propagation slave -- \
        "$PYTHON" -c "$HOLD_SOCKET" "$HOLDER_PIDFILE" "$SOCK" </dev/null >/dev/null 2>&1 &
    else
      # shellcheck disable=SC2016 # $$ and $1 are the inner shell's
      setsid nsenter --net="$NETNS" -- unshare --mount --propagation slave -- \
        sh -c 'echo $$ >"$1"; exec sleep infinity' holder "$HOLDER_PIDFILE" </dev/null >/dev/null 2>&1 &
    fi
    for _ in $(seq 1 100); do holder_pid >/dev/null && break; sleep 0.02; done
    holder_pid >/dev/null || die "the namespace holder did not start"
    local h
    h=$(holder_pid)
    [ "$(readlink "/proc/$h/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || die "holder $h shares the host's mount namespace"
    # /run/containerd of its own, in its mount namespace only: dockerd never takes a containerd
    # of the host (/run/containerd/containerd.sock) for its own, and the shims' sockets
    # (/run/containerd/s/...) never show on the host
    mkdir -p /run/containerd
    nsenter --target "$h" --mount -- mount -t tmpfs -o mode=0700,size=4m private-engine /run/containerd
  fi
}

start_own_containerd() {
  own_ctd_pid >/dev/null && return 0
  local h
  h=$(holder_pid)
  cat >"$CTD_CONF" <<EOF
version = 2
root = "$DATA/ctd"
state = "$EXEC/ctd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
[plugins."io.containerd.monitor.v1.cgroups"]
  no_prometheus = true
EOF
  # shellcheck disable=SC2016 # $$, $1 and $@ are the inner shell's
  TMPDIR=$DIR/tmp setsid nsenter --target "$h" --mount --net -- \
    sh -c 'echo $$ >"$1"; shift; exec "$@"' ctd "$CTD_PIDFILE" "$CONTAINERD" --config "$CTD_CONF" \
    </dev/null >>"$CTD_LOG" 2>&1 &
  for _ in $(seq 1 200); do [ -S "$CTD_SOCK" ] && own_ctd_pid >/dev/null && return 0; sleep 0.025; done
  tail -n 20 "$CTD_LOG" >&2 || true
  die "containerd did not start"
}

start_dockerd() {
  read_options
  local pid
  if pid=$(dockerd_pid); then
    say "dockerd $pid already runs"
    wait_api 60
    return
  fi
  local h
  h=$(holder_pid) || die "no namespace holder: run up first"
  [ -f "$CONF" ] || echo '{}' >"$CONF"
  # TMPDIR: containerd writes its stack dumps there (containerd.<pid>.stacks.log) when dockerd
  # kills it (SIGUSR1 first) for failing its health checks
  mkdir -p "$DATA" "$EXEC" "$DIR/tmp"
  local args=(
    -H "unix://$SOCK" --pidfile "$PIDFILE" --data-root "$DATA" --exec-root "$EXEC"
    --config-file "$CONF" --cgroup-parent "/$NAME" --exec-opt native.cgroupdriver=cgroupfs
  )
  [ "$LIVE" = 1 ] && args+=(--live-restore)
  if [ "$OWN" = 1 ]; then
    start_own_containerd
    args+=(--containerd "$CTD_SOCK")
  fi
  # a pidfile of a dockerd that was killed names a pid that may belong to someone else by now
  [ -e "$PIDFILE" ] && ! dockerd_pid >/dev/null && rm -f "$PIDFILE"
  echo "=== $(date -u +%FT%T.%NZ) start ${args[*]}" >>"$LOG"
  if [ "$SA" = 1 ]; then
    args[1]=fd://
    TMPDIR=$DIR/tmp setsid "$PYTHON" -c "$HAND_SOCKET" "$h" nsenter --target "$h" --mount --net -- "$DOCKERD" "${args[@]}" \
      </dev/null >>"$LOG" 2>&1 &
  else
    TMPDIR=$DIR/tmp setsid nsenter --target "$h" --mount --net -- "$DOCKERD" "${args[@]}" </dev/null >>"$LOG" 2>&1 &
  fi
  wait_api 60 $!
}

stop_dockerd() {  # signal
  local sig=$1 pid
  if ! pid=$(dockerd_pid); then
    say "no dockerd of $DIR runs"
    return 0
  fi
  local ctd
  ctd=$(managed_ctd_pid || true)
  echo "=== $(date -u +%FT%T.%NZ) SIG$sig to $pid" >>"$LOG"
  kill -"$sig" "$pid"
  if ! wait_gone "$pid" 90; then
    say "dockerd $pid still runs 90 s after SIG$sig"
    return 1
  fi
  # the containerd dockerd started goes with it: a TERM stops it, a KILL kills it (dockerd starts
  # it with a parent-death signal) a few ms later. A dockerd started before that would take the
  # dying one over ("containerd is still running") and give up after a minute.
  # it may stay a zombie a while (whoever adopted it reaps it): its pidfile goes, so that the next
  # dockerd starts a containerd of its own instead of waiting a minute for the dead one
  if [ -n "$ctd" ]; then
    wait_gone "$ctd" 10 || say "the managed containerd $ctd still runs 10 s after dockerd's exit"
    alive "$ctd" || rm -f "$MANAGED_CTD_PIDFILE"
  fi
  return 0
}

# every process in the cgroup parent of its containers (all hierarchies)
cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/*/"$NAME" /sys/fs/cgroup/"$NAME"; do [ -d "$d" ] && echo "$d"; done
  return 0
}
cgroup_pids() {
  local d
  for d in $(cgroup_dirs); do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un
}
# every process in its mount namespace (dockerd, containerd, shims), but the holder
ns_pids() {
  local h=$1 ns p
  ns=$(readlink "/proc/$h/ns/mnt")
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" != "$h" ] && [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "$p"
  done
  return 0
}

down() {
  local pid h p
  if pid=$(dockerd_pid) && api_up; then
    # containers first: dockerd gives each one its stop timeout at shutdown
    for p in $(curl -fsS --max-time 10 --unix-socket "$SOCK" 'http://engine/containers/json?all=1' | jq -r '.[].Id'); do
      curl -fsS --max-time 20 --unix-socket "$SOCK" -X DELETE "http://engine/containers/$p?force=1&v=1" >/dev/null || true
    done
  fi
  stop_dockerd TERM || stop_dockerd KILL || true
  # what is left: containers (in its cgroup parent), shims and containerd (in its mount namespace)
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local left
    left="$(cgroup_pids)"
    if h=$(holder_pid); then left="$left $(ns_pids "$h")"; fi
    # shellcheck disable=SC2086 # one pid a word
    left=$(printf '%s\n' $left | sort -un | tr '\n' ' ')
    left=${left% }
    [ -n "$left" ] || break
    say "stopping what is left: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.2
  done
  local c
  if h=$(holder_pid); then
    kill -KILL "$h"
    wait_gone "$h" 10 || true
  fi
  [ -e "$NETNS" ] && ip netns del "$NAME"
  for c in $(cgroup_dirs); do
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ ! -d "$c" ] || say "cgroup $c is not empty: left"
  done
  # the host's mount table must hold nothing under DIR before anything is removed
  if awk -v d="$DIR/" '{ if (index($5 "/", d) == 1) found=1 } END { exit !found }' /proc/self/mountinfo; then
    die "mounts under $DIR in the host's mount namespace: not removing anything"
  fi
  rm -rf --one-file-system -- "$DATA" "$EXEC" "$DIR/tmp" "$SOCK" "$PIDFILE" "$HOLDER_PIDFILE" "$CTD_SOCK" \
    "$CTD_PIDFILE" "$CTD_CONF" "$CONF" "$OPTIONS"
  say "down: $DIR"
}

status() {
  local pid
  echo "dir=$DIR netns=$NAME socket=$SOCK"
  echo "holder=$(holder_pid || echo none) dockerd=$(dockerd_pid || echo none)" \
    "managed-containerd=$(managed_ctd_pid || echo none) own-containerd=$(own_ctd_pid || echo none)"
  if api_up; then echo "api=up"; else echo "api=down"; fi
  [ -f "$OPTIONS" ] && cat "$OPTIONS"
  return 0
}

case "$CMD" in
  up)
    read_options
    namespaces_up
    start_dockerd
    say "up: DOCKER_HOST=unix://$SOCK (dockerd $(dockerd_pid), live-restore=$LIVE, own-containerd=$OWN, socket-activation=$SA)"
    ;;
  start) start_dockerd ;;
  stop) stop_dockerd TERM ;;
  kill) stop_dockerd KILL ;;
  restart)
    stop_dockerd TERM
    start_dockerd
    ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
