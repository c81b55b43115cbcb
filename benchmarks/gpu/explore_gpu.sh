#!/usr/bin/env bash
# The seed's question on a lent GPU machine, in one device call: the machine's topology, then
# `hpcbench explore` with the torch backend's GPU defaults for each model, R interleaved repeats,
# and the full report (verdict, validity checks, telemetry) of one run of the winner.
#   bash benchmarks/gpu/explore_gpu.sh [SECONDS_PER_RUN] [MODELS] [REPEATS]
# MODELS: comma list (default resnet50). Writes under $OUT (default /tmp/hpcbench-explore):
# explore.log, topo.json, and per model explore-MODEL.json and explore-MODEL.png.
# Wheels of packages the GPU machine lacks go in .whl/ (benchmarks/gpu/device_env.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
models=${2:-resnet50}
repeats=${3:-3}
out=${OUT:-/tmp/hpcbench-explore}
mkdir -p "$out"
exec > >(tee -a "$out/explore.log") 2>&1

source benchmarks/gpu/device_env.sh
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "start: $(nvidia-smi -L | wc -l) GPU(s), $(nproc) CPUs, ${secs}s per run, models $models"
nvidia-smi --query-gpu=index,name,pci.bus_id,power.limit,clocks.max.sm,driver_version \
    --format=csv
python3 -m hpcbench topo --json >"$out/topo.json" && python3 -m hpcbench topo | head -30
rc=0
for model in ${models//,/ }; do
    dir=/tmp/hpcbench-explore-runs/$model
    stamp "explore $model"
    python3 -m hpcbench explore --backend torch --model "$model" --duration-s "$secs" \
        --repeats "$repeats" --out "$dir" || rc=1
    cp "$dir/explore.json" "$out/explore-$model.json" 2>/dev/null
    cp "$dir/explore.png" "$out/explore-$model.png" 2>/dev/null
    # The winner's last run in full: the verdict with its checks and the telemetry block.
    last=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); best=[c for c in e["candidates"] if c["label"]==e["best"]][0]; print(best["runs"][-1]["run_dir"])' "$dir/explore.json" 2>/dev/null)
    if [[ -n "$last" ]]; then
        stamp "report $last"
        python3 -m hpcbench report "$last"
        python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({k: s.get(k) for k in ("validity", "telemetry")}, indent=1))' "$last/summary.json"
    fi
done
stamp "done (exit $rc)"
exit $rc
