#!/usr/bin/env bash
# Every GPU measurement of issues 7 and 10 in one call on an H200 machine (1, 2 or 4 GPUs):
#   bash benchmarks/gpu/run_all.sh [SECONDS_PER_RUN] [SECTIONS]
# SECTIONS (comma list, run in that order; default all): topo,bare,layouts,seed,data,precision,
# modes,best,tests; also datamulti (ranks x 1 GPU on staged shards; data runs it too). bare also
# runs the 1x1 reference through hpcbench; seed is issue 10.
# BUDGET_S (default 520): no run starts later than this; GPU_TEST_MARKS: pytest -m expression.
# Writes under $OUT (default /tmp/hpcbench-gpu): all.log, tables.md, results.json, topo.json,
# bare.jsonl, runs.tar.gz (summaries, specs, plans, logs and rank files of every run).
# Wheels of packages the GPU machine lacks go in .whl/ (benchmarks/gpu/device_env.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
sections=${2:-topo,bare,layouts,seed,data,precision,modes,best,tests}
# Runs that would start after this many seconds are skipped, so collection always happens
# inside the device tool's 600 s limit per command.
budget_s=${BUDGET_S:-520}
out=${OUT:-/tmp/hpcbench-gpu}
runs=/tmp/hpcbench-gpu-runs
mkdir -p "$out" "$runs"
exec > >(tee -a "$out/all.log") 2>&1

source benchmarks/gpu/device_env.sh
ngpu=$(nvidia-smi -L | wc -l)
want() { [[ ",$sections," == *",$1,"* ]]; }
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp "start: $ngpu GPU(s), $(nproc) CPUs, ${secs}s per run, sections $sections"
nvidia-smi --query-gpu=index,name,pci.bus_id,power.limit,clocks.max.sm,driver_version \
    --format=csv
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cudnn", torch.backends.cudnn.version())'

# hb NAME ARGS...: one `hpcbench run` of ResNet-50 fp16 b256 with a CUDA graph unless ARGS
# override; its printed result goes to the log, its run directory to $runs/NAME.
hb() {
    local name=$1
    shift
    if ((SECONDS > budget_s)); then
        stamp "skip $name: past the ${budget_s}s budget"
        return
    fi
    stamp "run $name: $*"
    local t0=$SECONDS
    python3 -m hpcbench run --backend torch --model resnet50 --precision fp16 --batch-size 256 \
        --cuda-graph --duration-s "$secs" --warmup-batches 10 --accept-warnings -q \
        --out "$runs/$name" "$@" >"$runs/$name.log" 2>&1
    local rc=$?
    if ((rc != 0)); then
        echo "   FAILED (exit $rc):"
        tail -n 25 "$runs/$name.log"
    else
        grep -E "common-window|DLBS adjusted|^skew" "$runs/$name.log" | sed 's/^/   /'
    fi
    echo "   ($((SECONDS - t0)) s)"
}
all_gpus=$(seq -s, 0 $((ngpu - 1)))
one_per_rank=$(seq -s';' 0 $((ngpu - 1)))

section_tests() {
    ((SECONDS < budget_s)) || return 0
    stamp "gpu tests"
    python3 -m pytest -q -m "${GPU_TEST_MARKS:-gpu}" -p no:cacheprovider tests/test_torch_gpu.py \
        2>&1 | tail -15
}
section_topo() {
    python3 -m hpcbench topo --json >"$out/topo.json" && stamp "topo: $out/topo.json"
    python3 -m hpcbench topo | head -30
}
section_bare() {
    stamp "bare loop"
    python3 benchmarks/gpu/bare_loop.py --cuda-graph --seconds "$secs" \
        --variants copy,nocopy | tee -a "$runs/bare.jsonl"
    # The same settings through hpcbench right after (the reference of every ratio below).
    hb r50_fp16_1x1 --gpus 0
}
section_layouts() {
    ((ngpu > 1)) || return 0
    hb "r50_fp16_1x$ngpu" --gpus "$all_gpus"
    hb "r50_fp16_${ngpu}x1" --gpus "$one_per_rank"
    if ((ngpu == 4)); then
        hb r50_fp16_2x2 --gpus "0,1;2,3"
    fi
}
section_modes() {
    hb r50_fp16_tele0 --gpus 0 --telemetry-hz 0
    hb r50_fp16_tele100 --gpus 0 --telemetry-hz 100
    hb r50_fp16_eager --gpus 0 --no-cuda-graph
    hb r50_fp16_compile --gpus 0 --no-cuda-graph --compile
    hb r50_fp16_compile_graph --gpus 0 --compile
}
section_data() {
    stamp "data make"
    python3 -m hpcbench data make --images $((1024 * ngpu)) --shards "$ngpu" --out /tmp/hb-data
    sync
    hb r50_fp16_data --gpus 0 --data /tmp/hb-data
    hb r50_fp16_staged --gpus 0 --data /tmp/hb-data --stage-data
    if ((ngpu > 1)); then
        hb "r50_fp16_${ngpu}x1_staged" --gpus "$one_per_rank" --data /tmp/hb-data --stage-data
    fi
}
section_datamulti() {
    # Every rank stages its own shard (rank r reads shard r) into /dev/shm under its binding.
    ((ngpu > 1)) || return 0
    ((SECONDS < budget_s)) || return 0
    [[ -f /tmp/hb-data/manifest.json ]] ||
        python3 -m hpcbench data make --images $((1024 * ngpu)) --shards "$ngpu" --out /tmp/hb-data
    hb "r50_fp16_${ngpu}x1_staged" --gpus "$one_per_rank" --data /tmp/hb-data --stage-data
}
section_precision() {
    hb r50_bf16_1x1 --gpus 0 --precision bf16
    hb r50_tf32_1x1 --gpus 0 --precision tf32
    hb r50_fp32_1x1 --gpus 0 --precision fp32
}
section_best() {
    hb r50_fp16_b512 --gpus 0 --batch-size 512
    hb r50_fp16_b512_compile --gpus 0 --batch-size 512 --compile
}
section_seed() {
    # Issue 10: the seed's 8-GPU layouts scaled to this machine, ResNet-50 and AlexNet b1024.
    layouts=("1x$ngpu:$all_gpus" "${ngpu}x1:$one_per_rank")
    if ((ngpu == 4)); then
        layouts+=("2x2:0,1;2,3" "2x1:0;2")
    elif ((ngpu == 8)); then
        # The seed's own layouts (2 sockets x 4 GPUs on its machine).
        layouts+=("2x4:0,1,2,3;4,5,6,7" "2x2:0,2;4,6" "4x2:0,1;2,3;4,5;6,7")
    fi
    section_alexnet1
    for model in resnet50 alexnet; do
        for item in "${layouts[@]}"; do
            name=${item%%:*}
            gpus=${item#*:}
            if [[ $model == resnet50 && -d "$runs/r50_fp16_$name" ]]; then
                continue # measured above with the same settings
            fi
            if [[ $model == resnet50 ]]; then
                hb "r50_fp16_$name" --gpus "$gpus"
            else
                hb "alexnet_$name" --gpus "$gpus" --model alexnet --batch-size 1024
            fi
        done
    done
}
section_alexnet1() {
    hb alexnet_1x1 --gpus 0 --model alexnet --batch-size 1024
}

for section in ${sections//,/ }; do
    if ! declare -F "section_$section" >/dev/null; then
        echo "unknown section $section" >&2
        exit 2
    fi
    "section_$section"
done

stamp "collect"
python3 benchmarks/gpu/collect.py "$runs" --out "$out/results.json" | tee "$out/tables.md"
cp "$runs/bare.jsonl" "$out/" 2>/dev/null
tar -czf "$out/runs.tar.gz" -C "$runs" --exclude='result.h5' . &&
    ls -la "$out"
stamp "done"
sleep 1 # let tee write the last lines
