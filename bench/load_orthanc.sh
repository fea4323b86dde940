#!/usr/bin/env bash
# Load /tmp/qbench-ds into a fresh private Orthanc with 4 parallel storescu (one per group folder), niced.
# Env: ORTHANC_BENCH_DIR, ORTHANC_HTTP_PORT, ORTHANC_DICOM_PORT (as orthanc_up.sh). Orthanc must be up.
set -euo pipefail
DS="${DS:-/tmp/qbench-ds}"
HTTP="${ORTHANC_HTTP_PORT:-8043}"; DICOM="${ORTHANC_DICOM_PORT:-4343}"
LOGS="${LOGS:-/tmp/qbench-results/load-logs}"
mkdir -p "$LOGS"
EXPECTED=$(/tmp/benchvenv/bin/python -c "import json;print(json.load(open('$DS/manifest.json'))['instances_count'])")
find "$DS" -name "*.dcm" -exec cat {} + > /dev/null   # page cache: measure the node, not the disk
t0=$(date +%s.%N)
pids=()
for g in "$DS"/g*; do
  TCP_NODELAY=1 nice -n 10 timeout 7200 storescu -v -aet BENCH -aec ORTHANC -to 30 -ta 30 -td 300 -nh \
      +sd +r 127.0.0.1 "$DICOM" "$g" > "$LOGS/$(basename "$g").log" 2>&1 &
  pids+=($!)
done
rc=0
i=0
while :; do  # poll every 2 s (wall time), progress every 60 s; bounded by the storescu timeouts above
  alive=0; for p in "${pids[@]}"; do [ -d /proc/$p ] && alive=1; done
  [ $alive = 0 ] && break
  sleep 2; i=$((i + 1))
  if [ $((i % 30)) = 0 ]; then
    n=$(curl -fsS -m 10 "http://127.0.0.1:$HTTP/statistics" | tr -d '\n ' | sed -E 's/.*"CountInstances":([0-9]+).*/\1/' || echo "?")
    echo "$(date +%T) $n / $EXPECTED instances, $(echo "$(date +%s.%N) - $t0" | bc | cut -d. -f1) s"
  fi
done
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
t1=$(date +%s.%N)
el=$(echo "$t1 - $t0" | bc)
ok=$(cat "$LOGS"/g*.log | grep -c "Received Store Response (Success" || true)
assoc=$(cat "$LOGS"/g*.log | grep -c "Association Accepted" || true)
stats=$(curl -fsS -m 30 "http://127.0.0.1:$HTTP/statistics")
n=$(echo "$stats" | tr -d '\n ' | sed -E 's/.*"CountInstances":([0-9]+).*/\1/')
echo "storescu rc=$rc, $ok Success responses, $assoc associations, wall $el s, $(echo "scale=1; $ok / $el" | bc) inst/s"
echo "Orthanc /statistics: $stats"
[ "$n" = "$EXPECTED" ] && [ "$ok" = "$EXPECTED" ] && echo "OK: node holds $n = $EXPECTED instances" || { echo "MISMATCH: $n (ok $ok) vs $EXPECTED"; exit 1; }
