#!/usr/bin/env bash
# dcmnode and Orthanc 1.10.1 (TCP_NODELAY on) side by side in one run of the shared harness (issue 19).
#
#   bash bench/side_by_side.sh [--rounds 3] [--out DIR] [--shared DIR] [--python PY] [--dcmnode-src DIR]
#                              [--setup] [... see --help]
#
# Each round: a fresh Orthanc and a fresh dcmnode one after the other (the order alternates), each measured by
# ../shared/bench/bench_node.py (all phases, --accept-encoding identity) and by bench/bench_parallel_store.py
# (4 and 16 parallel storescu associations), then the disk's fsync limit. Writes summary.md (the issue's table,
# medians of the rounds), the raw JSON of every round and the logs into bench/results/<date>-side-by-side/ (--out).
# --setup runs ../shared/bench/setup.sh first when /tmp/benchvenv, Orthanc or dcmtk are missing (root, apt).
# The logic is in bench/side_by_side.py; this wrapper checks the tools, runs it, and on Ctrl-C / SIGTERM (or if
# it dies) stops what it started: dcmnode by the PID in <work>/dcmnode.pid, Orthanc by orthanc_down.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="$HERE/../../shared/bench"
WORK=/tmp/side-by-side
BENCH_PY=/tmp/benchvenv/bin/python
SETUP=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --shared) SHARED="${args[i + 1]:-}" ;;
    --shared=*) SHARED="${args[i]#*=}" ;;
    --work) WORK="${args[i + 1]:-}" ;;
    --work=*) WORK="${args[i]#*=}" ;;
    --bench-python) BENCH_PY="${args[i + 1]:-}" ;;
    --bench-python=*) BENCH_PY="${args[i]#*=}" ;;
    --setup) SETUP=1 ;;
    -h | --help)
      sed -n '2,13p' "$0"
      [ -x "$BENCH_PY" ] && exec "$BENCH_PY" "$HERE/side_by_side.py" --help
      exit 0
      ;;
  esac
done

missing=()
[ -f "$SHARED/bench_node.py" ] || { echo "side_by_side: no shared harness at $SHARED (use --shared DIR)" >&2; exit 2; }
[ -x "$BENCH_PY" ] || missing+=("the harness venv $BENCH_PY")
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=("Orthanc (apt: orthanc orthanc-dicomweb)")
command -v storescu >/dev/null 2>&1 || missing+=("dcmtk storescu")
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$SETUP" = 1 ]; then
    echo "side_by_side: missing ${missing[*]}: running $SHARED/setup.sh" >&2
    bash "$SHARED/setup.sh"
  else
    printf 'side_by_side: missing: %s\n' "${missing[@]}" >&2
    echo "  run once (root, apt):  bash $SHARED/setup.sh   (or add --setup)" >&2
    exit 2
  fi
fi

child=""
# shellcheck disable=SC2317  # called from the traps
cleanup() {
  trap - INT TERM HUP EXIT
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true  # side_by_side.py stops the nodes itself
    wait "$child" 2>/dev/null || true
  fi
  # the safety net, should side_by_side.py have died without its clean-up
  if [ -f "$WORK/dcmnode.pid" ]; then
    pid="$(cat "$WORK/dcmnode.pid")"
    if [ -n "$pid" ] && grep -qa dcmnode "/proc/$pid/cmdline" 2>/dev/null; then
      echo "side_by_side: stopping dcmnode PID $pid" >&2
      kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$WORK/dcmnode.pid"
  fi
  if [ -f "$WORK/orthanc/orthanc.pid" ]; then
    ORTHANC_BENCH_DIR="$WORK/orthanc" bash "$SHARED/orthanc_down.sh" --wipe >&2 || true
  fi
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 129' HUP
trap cleanup EXIT

"$BENCH_PY" "$HERE/side_by_side.py" "$@" &
child=$!
rc=0
wait "$child" || rc=$?
child=""
exit "$rc"
