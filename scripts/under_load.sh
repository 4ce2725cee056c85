#!/usr/bin/env bash
# Run a command with a CPU hog on every core, as CI's noisy neighbours would: `make test-under-load`.
# The hogs are busy shell loops started here and stopped by their PIDs (never by name), also on
# Ctrl-C.  The 1-minute load average is sampled every 30 s and summarised at the end.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
cores=$(nproc)
pids=()
samples=$(mktemp)
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}
trap 'stop; rm -f "$samples"' EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$cores"); do
  ( while :; do :; done ) &
  pids+=($!)
done
( while :; do cut -d' ' -f1 /proc/loadavg >>"$samples"; sleep 30; done ) &
pids+=($!)
echo "under-load: $cores CPU hog(s) on $cores core(s) (pids ${pids[*]:0:$cores}); load now $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
"$@"
rc=$?
stop
summary=$(sort -n "$samples" | awk '{a[NR]=$1} END {if (NR) printf "min %s, median %s, max %s over %d samples", a[1], a[int((NR+1)/2)], a[NR], NR}')
echo "under-load: exit $rc after $(( $(date +%s) - start )) s; 1-min load average: ${summary:-no samples}"
exit $rc
