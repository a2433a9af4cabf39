# Sourced by the serving benchmarks (sweep.sh, score_latency.sh): one cluster of
# deploy/launch-cluster.sh in the background, for as long as the script runs.
#
#   start_cluster STDOUT_FILE LOG_FILE BUILD [launch-cluster options ...]
#     starts the launcher (its stdout lines to STDOUT_FILE, the processes' output to LOG_FILE) on a
#     free port without metrics, waits until it serves, and sets ADDR (HOST:PORT) and LAUNCH_PID;
#     returns 1, after printing the end of the log, when the cluster does not start.
#   stop_cluster
#     SIGTERM to the launcher (which drains and stops everything) and waits for it.

start_cluster() {
  local out="$1" log="$2" build="$3"
  shift 3
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  # The launcher runs in the foreground of its own process group until it is sent SIGTERM.
  "$repo/deploy/launch-cluster.sh" --build-dir "$build" --listen 127.0.0.1:0 --metrics-listen none "$@" \
    > "$out" 2> "$log" &
  LAUNCH_PID=$!
  ADDR=""
  while kill -0 "$LAUNCH_PID" 2>/dev/null; do
    ADDR="$(sed -n 's/^launch-cluster: serving on //p' "$out")"
    [[ -z "$ADDR" ]] || return 0
    sleep 1
  done
  echo "the cluster did not start; the end of its log:" >&2
  tail -n 30 "$log" >&2
  return 1
}

stop_cluster() {
  [[ -n "${LAUNCH_PID:-}" ]] || return 0
  kill -TERM "$LAUNCH_PID" 2>/dev/null
  wait "$LAUNCH_PID" 2>/dev/null
  LAUNCH_PID=""
}
