#!/usr/bin/env bash
# One prepared GPU session for vlmkd (planned at about 7 minutes on one H200, never more than $BUDGET s): build
# and install vlmkd for the machine's own python, the contrastive-loss benchmark (time, memory, largest batch),
# every `requires_cuda` test, the teacher-forced AMP check of the fused loss, AMP training smoke runs,
# captioning on CUDA in bf16, and DALI GPU decode vs the DataLoader. Each step runs under its own `timeout`
# (cut to what is left of the budget), logs to $OUT/<step>.log and is summarised in $OUT/summary.md; a failing
# step does not stop the others. The exit code is the number of failed steps. See benchmarks/gpu/README.md.
#
#   bash benchmarks/gpu/run.sh             # on the GPU machine, from the repository root ($OUT: where results go)
#   bash benchmarks/gpu/run.sh --dry-run   # anywhere: checks the script, its tools and every python entry point
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT=${OUT:-$PWD/gpu-results}  # gets summary.md, contrastive_gpu.{md,json} and results.tar.gz (every log)
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-560}  # seconds for the whole script: the device tool allows 600 per command
WORK=$(mktemp -d)
LOGS=$WORK/results  # everything; packed into $OUT/results.tar.gz after each step (the device returns <= 8 files)
mkdir -p "$OUT" "$LOGS"
SUMMARY=$OUT/summary.md
failures=0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

record() {  # record NAME VERDICT SECONDS COMMAND...
    local name=$1 verdict=$2 took=$3
    shift 3
    echo "| $name | $verdict | $took s | \`$*\` |" >>"$SUMMARY"
    echo "step $name: $verdict in $took s"
    cp "$SUMMARY" "$LOGS/" && tar czf "$OUT/results.tar.gz" -C "$LOGS" --exclude "*.png" --exclude "*.safetensors" .
}

# Dry run of one step: its program exists; a python script parses and prints --help; a `python -m vlmkd CMD`
# subcommand exists and knows every --flag the step passes it.
dry_check() {
    local name=$1
    shift
    command -v "$1" >/dev/null 2>&1 || { echo "dry run: step $name: '$1' not found"; return 1; }
    if [ "$1" = "$PYTHON" ] && [ "${2:-}" = "-m" ] && [ "${3:-}" = "vlmkd" ]; then
        local help flag
        help=$(PYTHONSAFEPATH=1 "$PYTHON" -m vlmkd "$4" --help) || { echo "dry run: step $name: vlmkd $4 --help failed"; return 1; }
        for flag in "$@"; do
            case "$flag" in
                --*) grep -q -- "$flag\b" <<<"$help" || { echo "dry run: step $name: vlmkd $4 has no $flag"; return 1; } ;;
            esac
        done
    elif [ "$1" = "$PYTHON" ] && [ "${2:-}" != "-m" ] && [ "${2:-}" != "-c" ]; then
        env -u PYTHONSAFEPATH "$PYTHON" "$2" --help >/dev/null || { echo "dry run: step $name: $2 --help failed"; return 1; }
    fi
    echo "dry run: step $name: $*"
}

# step NAME SECONDS COMMAND...: run it under `timeout` (at most what is left of $BUDGET), log it, record the
# outcome. In a dry run, check it with dry_check instead.
step() {
    local name=$1 limit=$2
    shift 2
    if [ "$DRY_RUN" = 1 ]; then
        dry_check "$name" "$@" || failures=$((failures + 1))
        return
    fi
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
        record "$name" "NOT RUN (no time left)" 0 "$@"
        failures=$((failures + 1))
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local started=$SECONDS
    # PYTHONSAFEPATH for `python -m ...`: load the installed vlmkd (with its native modules), not this source tree.
    # Scripts, though, import their neighbours (benchmarks/_common.py) from their own folder: no safe path there.
    local path_mode=(-u PYTHONSAFEPATH)
    [ "${2:-}" = "-m" ] && path_mode=(PYTHONSAFEPATH=1)
    env "${path_mode[@]}" timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ "$rc" = 0 ] || { verdict="FAILED (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"; failures=$((failures + 1)); }
    record "$name" "$verdict" $((SECONDS - started)) "$@"
}

if [ "$DRY_RUN" = 0 ]; then
    {
        echo "# vlmkd GPU session, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
        "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
        "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
        nvcc --version | tail -1
        echo
        echo "| step | result | time | command |"
        echo "|---|---|---|---|"
    } >"$SUMMARY"
fi

# Wheels carried beside the tree (.whl/, see benchmarks/gpu/README.md) for what the machine's image lacks; no registry there.
if [ -d .whl ] && [ "$DRY_RUN" = 0 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. Build and install for this machine: sm_90 only, no build isolation (no registry), dependencies as they are.
step build 200 "$PYTHON" -m pip install -v --no-build-isolation --no-deps \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 .

# 2. The contrastive loss: eager, torch.compile, Triton, CUDA and the cuBLAS GEMM floor; memory; largest batch.
step contrastive 170 "$PYTHON" benchmarks/gpu/bench_contrastive_gpu.py --out "$OUT" --budget 0.1

# 3. Every test that needs a GPU (torch.compile over the Triton op among them).
step cuda_tests 150 "$PYTHON" -m pytest -q -m requires_cuda -p no:cacheprovider --junitxml "$LOGS/cuda_tests.xml" tests

# 4. The fused loss under bf16 / fp16 autocast, step by step against the reference; then vlmkd-train with AMP.
step amp_check 60 "$PYTHON" benchmarks/gpu/amp_check.py --out "$LOGS/amp"
for amp in bf16 fp16; do
    step "train_$amp" 45 "$PYTHON" -m vlmkd train --train "$LOGS/amp/data/train.txt" \
        --features "$LOGS/amp/data/features" --output "$LOGS/run_$amp" --arch resnet32 --width 0.5 --epochs 2 \
        --batch-size 32 --image-size 32 --vlmkd-weight 1 --task-loss balanced_softmax --contrastive-backend cuda \
        --amp "$amp" --device cuda --num-workers 2 --no-progress
done

# 5. Captioning on CUDA in bf16 with a tiny random LLaVA (its tokenizer is trained locally: nothing to download).
step tiny_vlm 40 "$PYTHON" -c "from vlmkd.testing.tiny_models import build_tiny_llava; build_tiny_llava('$WORK/llava')"
step caption 60 "$PYTHON" -m vlmkd caption "$LOGS/amp/data/train.txt" --model "$WORK/llava" --out "$LOGS/captions" \
    --device cuda --dtype bfloat16 --batch-size 32 --max-new-tokens 16 --no-progress

# 6. DALI decoding on the GPU (device="mixed") against the DataLoader on the same files, where DALI is installed.
if [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
    step loader 60 "$PYTHON" benchmarks/bench_loader.py --quick
else
    record loader "NOT RUN (nvidia.dali is not installed in this image)" 0 "$PYTHON" benchmarks/bench_loader.py --quick
fi

if [ "$DRY_RUN" = 0 ]; then
    echo >>"$SUMMARY"
    echo "failed steps: $failures" >>"$SUMMARY"
    cp "$SUMMARY" "$LOGS/" && tar czf "$OUT/results.tar.gz" -C "$LOGS" --exclude "*.png" --exclude "*.safetensors" .
    cat "$SUMMARY"
else
    echo "dry run: $failures problem(s)"
fi
rm -rf "$WORK"
exit "$failures"
