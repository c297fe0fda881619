#!/usr/bin/env bash
# Every GPU check in one pass (training, the CUDA tests, the simulator, inference and the server),
# for a machine with a CUDA device (about 6 minutes on an H200).
# Results go to $OUT (default runs/gpu): log.txt and a few JSON files; BENCHMARKS.md quotes them.
# Run from the repository root with the project importable (PYTHONPATH=. or an installed checkout).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
GPU=${GPU:-cuda}  # GPU=cpu: a dry run of the script on a machine without one
SECS=${SECS:-4}  # seconds per load level
abr() { "$PY" -m abr_cli.main "$@"; }
step() { echo; echo "=== $(date +%T) $*"; }
TRAIN_TRACES=(-t "markov:n=100,seed=8" -t "regime:n=150,seed=7,low_mbps=0.2,high_mbps=20")

train_speed() {  # device num_envs steps -> one JSON line: the run's mean steps/s after its first update
    local dir="/tmp/abr-train-$1-$2"
    rm -rf "$dir"
    local started=$SECONDS
    abr train "${TRAIN_TRACES[@]}" --device "$1" --num-envs "$2" --steps "$3" --eval-every 100000 --out "$dir" \
        >/dev/null 2>&1 || { echo "{\"device\": \"$1\", \"num_envs\": $2, \"failed\": true}"; return; }
    "$PY" - "$dir/metrics.csv" "$1" "$2" $((SECONDS - started)) <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
sps = [float(r["charts/steps_per_s"]) for r in rows[1:]]
print(json.dumps({"device": sys.argv[2], "num_envs": int(sys.argv[3]), "steps": int(float(rows[-1]["global_step"])),
                  "wall_s": int(sys.argv[4]), "steps_per_s_mean": sum(sps) / len(sps), "steps_per_s_max": max(sps)}))
EOF
}

{
    step "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(), os.cpu_count(), 'cores')"

    step "CUDA tests"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_learning.py -k "cuda or graph or smoke"

    step "inference only on the GPU: served (CUDA graphs), folded eager, module eager, resident (no transfers)"
    abr bench serve --no-load --device "$GPU" --path served --path folded --path module --path resident \
        --batch 1 --batch 16 --batch 256 --batch 1024 --batch 4096 --batch 16384 --batch 65536 \
        --out "$OUT/infer-cuda.json"

    step "server on the GPU (CUDA graphs, forward on a thread), load"
    ABR_DEVICE="$GPU" abr bench serve --seconds "$SECS" --batch 1 --out "$OUT/load-cuda.json"

    step "training steps/s, 128 sessions: cuda then cpu learner"
    { train_speed "$GPU" 128 600000; train_speed cpu 128 600000; } | tee "$OUT/train.jsonl"

    step "server on this machine's CPU, load; inference only on the CPU"
    ABR_DEVICE=cpu abr bench serve --seconds "$SECS" --device cpu --batch 1 --batch 256 --batch 1024 \
        --out "$OUT/load-cpu.json"

    step "server on the GPU, forward inline in the event loop"
    ABR_DEVICE="$GPU" ABR_INFERENCE_THREAD=false abr bench serve --seconds "$SECS" --batch 1 \
        --concurrency 1 --concurrency 64 --concurrency 256 --out "$OUT/load-cuda-inline.json"

    step "server on the GPU without CUDA graphs"
    ABR_DEVICE="$GPU" ABR_CUDA_GRAPHS=false abr bench serve --seconds "$SECS" --batch 1 \
        --concurrency 1 --concurrency 64 --concurrency 256 --out "$OUT/load-cuda-eager.json"

    step "training steps/s, 1024 sessions: cuda then cpu learner"
    { train_speed "$GPU" 1024 1200000; train_speed cpu 1024 1200000; } | tee -a "$OUT/train.jsonl"

    step "simulator core on the GPU (torch backend)"
    abr bench sim --batch 4096 --batch 65536 --device "$GPU" --seconds 1 --repeats 1

    step "done"
} 2>&1 | tee "$OUT/log.txt"
