#!/bin/bash
# 3 interleaved rounds: bench_dimse_retrieve.py and the shared harness (via bench_node_client.py) on base, new, combo, orthanc (+ the floor responder, find/get)
cd /work/wt-retrieve
O=/tmp/rt-node/final3
declare -A PORT=([base]=11422 [new]=11412 [combo]=11432 [orthanc]=4442 [floor]=11499)
declare -A AET=([base]=DCMNODE [new]=DCMNODE [combo]=DCMNODE [orthanc]=ORTHANC [floor]=FLOOR)
declare -A PIDF=([base]=/tmp/rt-base/serve.pid [new]=/tmp/rt-node/serve.pid [combo]=/tmp/rt-cmb/serve.pid [orthanc]=/tmp/rt-orthanc/orthanc.pid)
for r in 1 2 3; do
  for n in base new combo orthanc floor; do
    uptime > $O/load-$n-$r.txt
    extra="--server-pid $(cat ${PIDF[$n]} 2>/dev/null)"; phases=find,move,get
    if [ $n = floor ]; then extra=""; phases=find,get; fi
    /work/main/.venv/bin/python bench/bench_dimse_retrieve.py --patient-id-prefix BENCH42-C0- --scp-port 11413 --rounds 40 --retrievals 8 \
      --port ${PORT[$n]} --aet ${AET[$n]} $extra --phases $phases --label $n --out-json $O/mine-$n-$r.json > $O/mine-$n-$r.txt 2>&1
    (cd /work/shared/bench && /tmp/benchvenv/bin/python /work/wt-retrieve/bench/bench_node_client.py bench_node.py --dataset /tmp/ds-retrieve --dimse-port ${PORT[$n]} --aet ${AET[$n]} --scp-port 11413 --dicomweb-base none --phases $phases --n-retrieve 5 --n-queries 50 $extra --label $n --out-json $O/harness-$n-$r.json --out-md $O/harness-$n-$r.md > /dev/null 2>&1)
  done
done
echo finished > $O/done
