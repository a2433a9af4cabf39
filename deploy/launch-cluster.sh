#!/usr/bin/env bash
# Starts a whole moe-ep cluster with one command: the coordinator, then `mpirun` of N worker ranks;
# waits until the cluster is SERVING, prints the public address, and on Ctrl-C / SIGTERM shuts it
# all down cleanly (SIGTERM to the coordinator, which drains and sends Shutdown to every rank; then
# mpirun is waited for; anything still running after a timeout is killed). See deploy/README.md.
#
#   deploy/launch-cluster.sh [--np N] [--model DIR] [--hostfile FILE] [--listen ADDR]
#                            [--build-dir DIR] [other options] [-- extra mpirun args]
#
# A worker job that ends on its own (a rank died) or stops serving while mpirun still runs (a rank
# hung: the coordinator lost its heartbeats) is killed and, with --restart-workers N, started again
# up to N times; without restarts left the script stops everything and exits 1.
#
# Lines on stdout (stable, for scripts; everything the processes print goes to stderr, but
# moe-openai-server's stdout, which the script reads for its port):
#   launch-cluster: coordinator pid P
#   launch-cluster: ports public=P cluster=C metrics=M
#   launch-cluster: mpirun pid P
#   launch-cluster: serving on HOST:PORT
#   launch-cluster: openai pid P / openai on HOST:PORT   (with --openai-listen)
#   launch-cluster: mpirun exited unexpectedly (status S) | the workers have not served for S s ...
#   launch-cluster: restarting the worker job (K of N)      (then mpirun pid P, serving on HOST:PORT, or
#                   mpirun exited while starting | not SERVING after S s, and the next restart)
#   launch-cluster: openai server stopped (status S)      (with --openai-listen)
#   launch-cluster: stopped (coordinator status S, mpirun status S)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
usage: $0 [options] [-- extra mpirun args]
  --np N                 worker ranks (default 2)
  --model DIR            model folder (default $REPO/models/shakespeare-moe)
  --hostfile FILE        run the ranks on these hosts (mpirun --hostfile); the coordinator's cluster
                         port then listens on 0.0.0.0 and workers reach it at --advertise
  --listen ADDR          public address of the coordinator (default 127.0.0.1:50051; port 0: any free)
  --build-dir DIR        where moe-coordinator, moe-worker and moe-client are built (default $REPO/build)
  --cluster-port P       port of the internal cluster service (default 0: any free)
  --metrics-listen ADDR  Prometheus endpoint (default: the coordinator's, 127.0.0.1:9400; "none": off)
  --advertise HOST       host name or IP the workers use for the coordinator (default: with a
                         hostfile this host's first IP, else 127.0.0.1)
  --ports-file FILE      where the coordinator writes its ports (default: a temporary file)
  --ready-timeout S      give up when the cluster is not SERVING after S seconds (default 180)
  --stop-timeout S       on shutdown, wait this long for each process before killing it (default 20)
  --coordinator-arg ARG  extra moe-coordinator flag (repeatable), e.g. --coordinator-arg=--max-waiting=64
  --worker-arg ARG       extra moe-worker flag (repeatable), e.g. --worker-arg=--kv-tokens=65536
  --restart-workers N    start the worker job again, up to N times, when it ends on its own or hangs
                         (a restarted job that fails while starting counts as one of them too)
                         (default 0: stop everything and exit 1); requests in flight then wait for the
                         new job and go on there (the coordinator's --resume-timeout-s, by default
                         --hung-timeout + --ready-timeout + 60)
  --hung-timeout S       a job whose cluster has not been SERVING for S seconds while mpirun still
                         runs (a rank hung, its heartbeats lost) is killed (default 60)
  --openai-listen ADDR   also start moe-openai-server (OpenAI's /v1/completions and /v1/chat/completions
                         over the public API) on ADDR once the cluster serves, e.g. 0.0.0.0:8000
                         (port 0: any free)
  --openai-arg ARG       extra moe-openai-server flag (repeatable), e.g. --openai-arg=--chat-template=FILE
  --tls-cert-file FILE   the public API over TLS only, with this PEM certificate chain (and --tls-key-file
  --tls-key-file FILE    its key); the launcher's probes and the OpenAI front verify it against
                         MOE_TLS_CA_FILE, by default this certificate itself (self-signed); it must name
                         the host they reach (127.0.0.1 when --listen is local), or set MOE_TLS_SERVER_NAME.
                         The OpenAI front (--openai-listen) then serves HTTPS only with the same files
                         (--openai-arg=--ssl-certfile=... and --ssl-keyfile=... give it others)
  --cluster-tls          with --tls-cert-file: the cluster port serves TLS too, with the same files; the
                         workers verify it against MOE_TLS_CA_FILE (the certificate must then name the
                         address they dial: --advertise, or set MOE_TLS_SERVER_NAME, passed to them)
EOF
}

say() { echo "launch-cluster: $*"; }
die() { echo "launch-cluster: $*" >&2; exit 2; }

NP=2
MODEL="$REPO/models/shakespeare-moe"
HOSTFILE=""
LISTEN="127.0.0.1:50051"
BUILD="$REPO/build"
CLUSTER_PORT=0
METRICS=""
ADVERTISE=""
PORTS_FILE=""
READY_TIMEOUT=180
STOP_TIMEOUT=20
RESTARTS=0
HUNG_TIMEOUT=60
OPENAI_LISTEN=""
COORD_ARGS=()
WORKER_ARGS=()
OPENAI_ARGS=()
MPI_EXTRA=()
TLS_CERT=""
TLS_KEY=""
CLUSTER_TLS=0

while [[ $# -gt 0 ]]; do
  arg="$1"
  # --flag=value is the same as --flag value.
  if [[ "$arg" == --*=* ]]; then
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg="$1"
  fi
  case "$arg" in
    --) shift; MPI_EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --cluster-tls) CLUSTER_TLS=1; shift ;;
    --np|--model|--hostfile|--listen|--build-dir|--cluster-port|--metrics-listen|--advertise|--ports-file|\
    --ready-timeout|--stop-timeout|--coordinator-arg|--worker-arg|--restart-workers|--hung-timeout|--openai-listen|\
    --openai-arg|--tls-cert-file|--tls-key-file)
      [[ $# -ge 2 ]] || die "$arg needs a value"
      val="$2"; shift 2
      case "$arg" in
        --np) NP="$val" ;;
        --model) MODEL="$val" ;;
        --hostfile) HOSTFILE="$val" ;;
        --listen) LISTEN="$val" ;;
        --build-dir) BUILD="$val" ;;
        --cluster-port) CLUSTER_PORT="$val" ;;
        --metrics-listen) METRICS="$val" ;;
        --advertise) ADVERTISE="$val" ;;
        --ports-file) PORTS_FILE="$val" ;;
        --ready-timeout) READY_TIMEOUT="$val" ;;
        --stop-timeout) STOP_TIMEOUT="$val" ;;
        --coordinator-arg) COORD_ARGS+=("$val") ;;
        --worker-arg) WORKER_ARGS+=("$val") ;;
        --restart-workers) RESTARTS="$val" ;;
        --hung-timeout) HUNG_TIMEOUT="$val" ;;
        --openai-listen) OPENAI_LISTEN="$val" ;;
        --openai-arg) OPENAI_ARGS+=("$val") ;;
        --tls-cert-file) TLS_CERT="$val" ;;
        --tls-key-file) TLS_KEY="$val" ;;
      esac ;;
    *) usage >&2; die "unknown argument '$arg'" ;;
  esac
done

[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "--np: expected a positive integer, got '$NP'"
[[ "$CLUSTER_PORT" =~ ^[0-9]+$ ]] || die "--cluster-port: expected a port number, got '$CLUSTER_PORT'"
[[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die "--ready-timeout: expected seconds, got '$READY_TIMEOUT'"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "--stop-timeout: expected seconds, got '$STOP_TIMEOUT'"
[[ "$RESTARTS" =~ ^[0-9]+$ ]] || die "--restart-workers: expected a count, got '$RESTARTS'"
[[ "$HUNG_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--hung-timeout: expected a positive number of seconds, got '$HUNG_TIMEOUT'"
[[ "$LISTEN" == *:* ]] || die "--listen: expected HOST:PORT, got '$LISTEN'"
[[ -f "$MODEL/config.json" ]] || die "--model: $MODEL has no config.json"
if [[ -n "$TLS_CERT" || -n "$TLS_KEY" ]]; then
  [[ -n "$TLS_CERT" && -n "$TLS_KEY" ]] || die "--tls-cert-file and --tls-key-file go together"
  [[ -r "$TLS_CERT" ]] || die "--tls-cert-file: cannot read $TLS_CERT"
  [[ -r "$TLS_KEY" ]] || die "--tls-key-file: cannot read $TLS_KEY"
  # The probes (moe-client) and the OpenAI front reach the public API over TLS too.
  export MOE_TLS_CA_FILE="${MOE_TLS_CA_FILE:-$TLS_CERT}"
fi
((CLUSTER_TLS == 0)) || [[ -n "$TLS_CERT" ]] || die "--cluster-tls needs --tls-cert-file and --tls-key-file"
MODEL="$(cd "$MODEL" && pwd)"
if [[ -n "$HOSTFILE" ]]; then
  [[ -r "$HOSTFILE" ]] || die "--hostfile: cannot read $HOSTFILE"
fi
COORDINATOR_BIN="$BUILD/coordinator/moe-coordinator"
WORKER_BIN="$BUILD/worker/moe-worker"
CLIENT_BIN="$BUILD/clients/moe-client"
for b in "$COORDINATOR_BIN" "$WORKER_BIN" "$CLIENT_BIN"; do
  [[ -x "$b" ]] || die "$b is not built (cmake --build $BUILD --target moe-coordinator moe-worker moe-client)"
done
OPENAI_BIN="$BUILD/coordinator/openai/moe-openai-server"
if [[ -n "$OPENAI_LISTEN" ]]; then
  [[ "$OPENAI_LISTEN" == *:* ]] || die "--openai-listen: expected HOST:PORT, got '$OPENAI_LISTEN'"
  [[ -x "$OPENAI_BIN" ]] || die "$OPENAI_BIN is not built (cmake --build $BUILD --target moe-openai-server)"
fi
command -v mpirun >/dev/null || die "mpirun not found (Open MPI)"
command -v setsid >/dev/null || die "setsid not found (util-linux)"

# Open MPI refuses root unless told; as root we say so here rather than making every user find out.
if [[ "$(id -u)" == 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT="${OMPI_ALLOW_RUN_AS_ROOT:-1}"
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}"
fi
# Ranks waiting in a collective yield instead of spinning, and BLAS uses one thread per rank,
# unless the caller decided otherwise (several ranks per machine would otherwise fight for cores).
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
# The cluster port takes only ranks that know this launch's secret (MOE_CLUSTER_TOKEN: the
# coordinator requires it, mpirun -x hands it to every rank), so nothing else on the network can
# register as a rank and be sent prompts. A caller's own MOE_CLUSTER_TOKEN is kept.
if [[ -z "${MOE_CLUSTER_TOKEN:-}" ]]; then
  MOE_CLUSTER_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
fi
export MOE_CLUSTER_TOKEN

TMP_DIR="$(mktemp -d -t moe-cluster.XXXXXX)"
[[ -n "$PORTS_FILE" ]] || PORTS_FILE="$TMP_DIR/ports.json"
rm -f "$PORTS_FILE"

if [[ -n "$HOSTFILE" ]]; then
  CLUSTER_LISTEN="0.0.0.0:$CLUSTER_PORT"
  if [[ -z "$ADVERTISE" ]]; then
    ADVERTISE="$(hostname -I 2>/dev/null | awk '{print $1}')"
    [[ -n "$ADVERTISE" ]] || ADVERTISE="$(hostname)"
  fi
else
  CLUSTER_LISTEN="127.0.0.1:$CLUSTER_PORT"
  [[ -n "$ADVERTISE" ]] || ADVERTISE="127.0.0.1"
fi

COORD_PID=""
MPI_PID=""
OPENAI_PID=""
COORD_STATUS="-"
MPI_STATUS="-"
OPENAI_STATUS="0"

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 seconds for child $1 to exit; true when it did.
wait_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
  return 0
}

# Collects the exit status of an ended child into STATUS[pid] (not in a $(...) subshell, which
# cannot wait for its parent's children). A trapped signal arriving during `wait` makes it return
# 128 + the signal at once instead of the child's status (POSIX); bash remembers a reaped child's
# status, so a second `wait` gives the real one, or the same value when the child did die of a signal.
declare -A STATUS
reap() {
  [[ -n "$1" && -z "${STATUS[$1]:-}" ]] || return 0
  local st
  wait "$1" 2>/dev/null
  st=$?
  if ((st > 128)); then
    wait "$1" 2>/dev/null
    st=$?
  fi
  STATUS[$1]=$st
}

# Kills what is left of a session we created with setsid (its leader's pid is the session id):
# the ranks mpirun started live in that session, in process groups of their own.
kill_session() {
  local sid="$1"
  [[ -n "$sid" ]] || return 0
  pkill -KILL -s "$sid" 2>/dev/null || true
}

SHUTTING_DOWN=0
shutdown_cluster() {
  ((SHUTTING_DOWN)) && return
  SHUTTING_DOWN=1
  trap '' INT TERM
  [[ -z "$NAP_PID" ]] || kill "$NAP_PID" 2>/dev/null
  if [[ -n "$OPENAI_PID" ]]; then  # the HTTP front first: no new requests while the cluster drains
    kill -TERM "$OPENAI_PID" 2>/dev/null
    wait_exit "$OPENAI_PID" "$STOP_TIMEOUT" || { kill -KILL "$OPENAI_PID" 2>/dev/null; wait_exit "$OPENAI_PID" 5; }
    reap "$OPENAI_PID"
    OPENAI_STATUS="${STATUS[$OPENAI_PID]}"
    say "openai server stopped (status $OPENAI_STATUS)"
  fi
  if alive "$COORD_PID"; then
    say "stopping the coordinator (SIGTERM to pid $COORD_PID)"
    kill -TERM "$COORD_PID" 2>/dev/null
    if ! wait_exit "$COORD_PID" "$STOP_TIMEOUT"; then
      say "the coordinator did not exit within ${STOP_TIMEOUT}s: killing it"
      kill -KILL "$COORD_PID" 2>/dev/null
      wait_exit "$COORD_PID" 5
    fi
  fi
  if [[ -n "$COORD_PID" ]]; then
    reap "$COORD_PID"
    COORD_STATUS="${STATUS[$COORD_PID]}"
  fi
  kill_session "$COORD_PID"
  if alive "$MPI_PID"; then
    # The coordinator's Shutdown makes every rank leave its loop; mpirun then exits by itself.
    if ! wait_exit "$MPI_PID" "$STOP_TIMEOUT"; then
      say "the workers did not exit within ${STOP_TIMEOUT}s: SIGTERM to mpirun (pid $MPI_PID)"
      kill -TERM "$MPI_PID" 2>/dev/null
      if ! wait_exit "$MPI_PID" 10; then
        kill -KILL "$MPI_PID" 2>/dev/null
        wait_exit "$MPI_PID" 5
      fi
    fi
  fi
  if [[ -n "$MPI_PID" ]]; then
    reap "$MPI_PID"
    MPI_STATUS="${STATUS[$MPI_PID]}"
  fi
  kill_session "$MPI_PID"
  rm -rf "$TMP_DIR"
  say "stopped (coordinator status $COORD_STATUS, mpirun status $MPI_STATUS)"
}

on_signal() {
  say "caught $1"
  shutdown_cluster
  [[ "$COORD_STATUS" == 0 && "$MPI_STATUS" == 0 && "$OPENAI_STATUS" == 0 ]] && exit 0
  exit 1
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM
trap 'shutdown_cluster' EXIT

# Interruptible sleep: a trap runs as soon as the signal arrives, not after the sleep.
NAP_PID=""
nap() {
  sleep "$1" &
  NAP_PID=$!
  wait "$NAP_PID" 2>/dev/null
  NAP_PID=""
}

# --- coordinator ------------------------------------------------------------------------------
# setsid: its own session, so a Ctrl-C in the terminal reaches only this script, which then stops
# everything in order (a SIGINT straight to mpirun would kill the ranks before they hear Shutdown).
coord_cmd=("$COORDINATOR_BIN" --model "$MODEL" --world-size "$NP" --listen "$LISTEN"
           --cluster-listen "$CLUSTER_LISTEN" --ports-file "$PORTS_FILE")
[[ -z "$METRICS" ]] || coord_cmd+=(--metrics-listen "$METRICS")
[[ -z "$TLS_CERT" ]] || coord_cmd+=(--tls-cert-file "$TLS_CERT" --tls-key-file "$TLS_KEY")
((CLUSTER_TLS == 0)) || coord_cmd+=(--cluster-tls-cert-file "$TLS_CERT" --cluster-tls-key-file "$TLS_KEY")
coord_cmd+=("${COORD_ARGS[@]}")
# With restarts, requests in flight when a rank is lost wait for the next job (and go on where their
# streams stopped) for as long as noticing a hung job and starting another may take, unless told.
if ((RESTARTS > 0)) && [[ " ${COORD_ARGS[*]} " != *" --resume-timeout-s"* ]]; then
  coord_cmd+=(--resume-timeout-s "$((HUNG_TIMEOUT + READY_TIMEOUT + 60))")
fi
setsid "${coord_cmd[@]}" </dev/null >&2 &
COORD_PID=$!
say "coordinator pid $COORD_PID"

json_port() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p" "$PORTS_FILE" | head -n1; }

deadline=$((SECONDS + READY_TIMEOUT))
until [[ -s "$PORTS_FILE" ]]; do
  alive "$COORD_PID" || { reap "$COORD_PID"; say "the coordinator exited before listening (status ${STATUS[$COORD_PID]})"; exit 1; }
  ((SECONDS < deadline)) || { say "the coordinator wrote no ports file within ${READY_TIMEOUT}s"; exit 1; }
  nap 0.1
done
PUBLIC_PORT="$(json_port public)"
CLUSTER_PORT_BOUND="$(json_port cluster)"
METRICS_PORT="$(json_port metrics)"
[[ -n "$PUBLIC_PORT" && -n "$CLUSTER_PORT_BOUND" ]] || { say "cannot read the ports from $PORTS_FILE: $(cat "$PORTS_FILE")"; exit 1; }
say "ports public=$PUBLIC_PORT cluster=$CLUSTER_PORT_BOUND metrics=${METRICS_PORT:-0}"

LISTEN_HOST="${LISTEN%:*}"
case "$LISTEN_HOST" in
  ""|0.0.0.0|"[::]"|"*") PROBE_HOST=127.0.0.1; PUBLIC_HOST="$(hostname)" ;;
  *) PROBE_HOST="$LISTEN_HOST"; PUBLIC_HOST="$LISTEN_HOST" ;;
esac

# --- workers ----------------------------------------------------------------------------------
mpi_cmd=(mpirun -np "$NP" --bind-to none -x OPENBLAS_NUM_THREADS -x MOE_CLUSTER_TOKEN)
if [[ -n "$HOSTFILE" ]]; then
  mpi_cmd+=(--hostfile "$HOSTFILE")
else
  mpi_cmd+=(--oversubscribe)
fi
cluster_tls=()
if ((CLUSTER_TLS)); then
  cluster_tls=(--coordinator-tls-ca-file "$MOE_TLS_CA_FILE")
  [[ -z "${MOE_TLS_SERVER_NAME:-}" ]] || mpi_cmd+=(-x MOE_TLS_SERVER_NAME)
fi
mpi_cmd+=("${MPI_EXTRA[@]}" "$WORKER_BIN" --coordinator "$ADVERTISE:$CLUSTER_PORT_BOUND" "${cluster_tls[@]}"
          "${WORKER_ARGS[@]}")
start_workers() {
  setsid "${mpi_cmd[@]}" </dev/null >&2 &
  MPI_PID=$!
  say "mpirun pid $MPI_PID"
}

serving() { "$CLIENT_BIN" --server "$PROBE_HOST:$PUBLIC_PORT" --timeout 2 health >/dev/null 2>&1; }

# Until SERVING (false when a part died or READY_TIMEOUT passed, with a line saying which).
wait_serving() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  until serving; do
    alive "$COORD_PID" || { reap "$COORD_PID"; say "the coordinator exited while starting (status ${STATUS[$COORD_PID]})"; return 1; }
    alive "$MPI_PID" || { reap "$MPI_PID"; say "mpirun exited while starting (status ${STATUS[$MPI_PID]})"; return 1; }
    ((SECONDS < deadline)) || { say "not SERVING after ${READY_TIMEOUT}s"; return 1; }
    nap 0.2
  done
  say "serving on $PUBLIC_HOST:$PUBLIC_PORT"
}

# While both run: returns when a part ended, or after killing a job whose cluster has not served
# for HUNG_TIMEOUT seconds (the coordinator lost a rank that did not exit, e.g. a hung one).
watch_job() {
  local not_serving_since="" next_probe=$SECONDS
  while alive "$COORD_PID" && alive "$MPI_PID"; do
    nap 0.5
    watch_openai
    ((SECONDS >= next_probe)) || continue
    next_probe=$((SECONDS + 1))
    if serving; then
      not_serving_since=""
      continue
    fi
    [[ -n "$not_serving_since" ]] || not_serving_since=$SECONDS
    if ((SECONDS - not_serving_since >= HUNG_TIMEOUT)) && alive "$COORD_PID"; then
      say "the workers have not served for ${HUNG_TIMEOUT}s while mpirun runs: killing the job (pid $MPI_PID)"
      kill_session "$MPI_PID"
      wait_exit "$MPI_PID" 10
      return
    fi
  done
}

start_workers
wait_serving || exit 1

# --- the OpenAI-compatible HTTP front (optional) ------------------------------------------------
# Started once the cluster serves; it holds no state, so when it exits unexpectedly watch_job starts
# it again (on the same address; with port 0 the new port is printed as "openai on HOST:PORT").
# GET /metrics on the front answers the coordinator's Prometheus endpoint (as vLLM serves its
# metrics on the API port), unless metrics are off or the caller named a source.
OPENAI_METRICS=()
if [[ "${METRICS_PORT:-0}" != 0 && " ${OPENAI_ARGS[*]} " != *" --metrics-url"* ]]; then
  METRICS_HOST=127.0.0.1  # the coordinator's default (127.0.0.1:9400), or a bare port's host
  [[ "$METRICS" != *:* ]] || METRICS_HOST="${METRICS%:*}"
  case "$METRICS_HOST" in ""|0.0.0.0|"[::]"|"*") METRICS_HOST=127.0.0.1 ;; esac
  OPENAI_METRICS=(--metrics-url "http://$METRICS_HOST:$METRICS_PORT/metrics")
fi
start_openai() {
  : >"$TMP_DIR/openai.out"
  local https=()
  [[ -z "$TLS_CERT" ]] || https=(--ssl-certfile "$TLS_CERT" --ssl-keyfile "$TLS_KEY")  # OPENAI_ARGS' own win
  setsid "$OPENAI_BIN" --coordinator "$PROBE_HOST:$PUBLIC_PORT" --listen "$OPENAI_LISTEN" "${OPENAI_METRICS[@]}" \
    "${https[@]}" "${OPENAI_ARGS[@]}" </dev/null >"$TMP_DIR/openai.out" &
  OPENAI_PID=$!
  say "openai pid $OPENAI_PID"
  local deadline=$((SECONDS + 30))
  until grep -q "listening on port" "$TMP_DIR/openai.out" 2>/dev/null; do
    alive "$OPENAI_PID" || { reap "$OPENAI_PID"; OPENAI_STATUS="${STATUS[$OPENAI_PID]}"; OPENAI_PID="";
                             say "moe-openai-server exited while starting (status $OPENAI_STATUS)"; return 1; }
    ((SECONDS < deadline)) || { say "moe-openai-server did not listen within 30s"; return 1; }
    nap 0.1
  done
  OPENAI_PORT="$(sed -n 's/.*listening on port \([0-9][0-9]*\).*/\1/p' "$TMP_DIR/openai.out" | head -n1)"
  OPENAI_HOST="${OPENAI_LISTEN%:*}"
  case "$OPENAI_HOST" in ""|0.0.0.0|"[::]"|"*") OPENAI_HOST="$PUBLIC_HOST" ;; esac
  say "openai on $OPENAI_HOST:$OPENAI_PORT"
}

# A front that exited unexpectedly is started again; one that cannot start ends the launcher.
watch_openai() {
  [[ -n "$OPENAI_PID" ]] && ! alive "$OPENAI_PID" || return 0
  reap "$OPENAI_PID"
  say "moe-openai-server exited unexpectedly (status ${STATUS[$OPENAI_PID]}): starting it again"
  OPENAI_PID=""
  start_openai || exit 1
}

if [[ -n "$OPENAI_LISTEN" ]]; then
  start_openai || exit 1
fi

# --- run until told to stop, or until a part dies and no restart is left ------------------------
restarts_done=0
while true; do
  watch_job
  if ! alive "$COORD_PID"; then
    reap "$COORD_PID"
    say "the coordinator exited unexpectedly (status ${STATUS[$COORD_PID]})"
    exit 1
  fi
  reap "$MPI_PID"
  say "mpirun exited unexpectedly (status ${STATUS[$MPI_PID]})"
  kill_session "$MPI_PID"  # ranks mpirun left behind
  # A new job that fails while starting (a rank died or hung while loading: mpirun ends, or the
  # cluster is not SERVING within READY_TIMEOUT) uses up a restart too, and the next one is started.
  while true; do
    ((restarts_done < RESTARTS)) || exit 1
    restarts_done=$((restarts_done + 1))
    say "restarting the worker job ($restarts_done of $RESTARTS)"
    start_workers
    wait_serving && break
    alive "$COORD_PID" || exit 1  # (wait_serving said so)
    kill_session "$MPI_PID"
    wait_exit "$MPI_PID" 10
    reap "$MPI_PID"
  done
done
