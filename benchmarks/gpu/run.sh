#!/usr/bin/env bash
# One prepared GPU session for vlmkd (planned at about 7 minutes on one H100 or H200, never more than $BUDGET s):
# the machine's versions against vlmkd's requirements, build and install vlmkd for the machine's own python and
# torch, the contrastive-loss benchmark (time, memory, largest batch), every `requires_cuda` test, a ResNet-50 AMP
# training step with the fused loss (cuda / triton / reference / off), the teacher-forced AMP check, captioning on
# the GPU (shared prefix vs prompt by prompt, tiny LLaVA-NeXT in bf16), the TensorRT-LLM step, AMP training and
# captioning smoke runs, DALI GPU decode; then every target of issue #28 judged in $OUT/targets.md. Each step runs
# under its own `timeout` (cut to what is left of the budget), logs to $LOGS/<step>.log and is summarised in
# $OUT/summary.md; a failing step does not stop the others. The exit code is the number of failed steps.
# See benchmarks/gpu/README.md.
#
#   bash benchmarks/gpu/run.sh             # on the GPU machine, from the repository root ($OUT: where results go)
#   STEPS=contrastive,cuda_tests bash benchmarks/gpu/run.sh   # a rerun of some steps (env and build always run;
#                                                            # BUILD=0 skips the build on a machine still warm)
#   bash benchmarks/gpu/run.sh --dry-run   # anywhere: checks the script, its tools and every python entry point
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT=${OUT:-$PWD/gpu-results}  # gets summary.md, targets.md, the benchmarks' reports and results.tar.gz (every log)
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-480}  # seconds for the whole script (8 minutes: one device command may run 600 s)
RESERVE=20             # of which the final targets step keeps this much
STEPS=${STEPS:-all}    # comma-separated step names to run (env, build and targets always run)
BUILD=${BUILD:-1}      # 0: skip the build (vlmkd already installed for $PYTHON, e.g. on a machine still warm)
WORK=$(mktemp -d)
LOGS=$WORK/results  # everything; packed into $OUT/results.tar.gz after each step (the device returns <= 8 files)
mkdir -p "$LOGS"
[ "$DRY_RUN" = 1 ] || mkdir -p "$OUT"
SUMMARY=$OUT/summary.md
failures=0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

record() {  # record NAME VERDICT SECONDS COMMAND...
    local name=$1 verdict=$2 took=$3
    shift 3
    echo "| $name | $verdict | $took s | \`$*\` |" >>"$SUMMARY"
    echo "step $name: $verdict in $took s"
    pack
}

pack() {  # every log and report into $OUT/results.tar.gz (model weights and plots left out)
    cp "$SUMMARY" "$LOGS/" 2>/dev/null
    tar czf "$OUT/results.tar.gz" -C "$LOGS" --exclude "*.png" --exclude "*.safetensors" --exclude "*.parquet" .
}

wanted() {  # wanted NAME: is step NAME among $STEPS (env, build unless BUILD=0, and targets always are)?
    [ "$1" = build ] && { [ "$BUILD" != 0 ]; return; }
    [ "$STEPS" = all ] || [ "$1" = env ] || [ "$1" = targets ] || [[ ",$STEPS," == *",$1,"* ]]
}

# Dry run of one step, without running it: its program exists; for `python -m pytest`, the tests it selects are
# collected; for `python -m vlmkd SUBCOMMAND...`, the subcommand exists and its --help names every --flag the
# step passes; for `python script.py`, --help runs (imports and parses) and names every --flag the step passes,
# and a script that has --dry-run parses the step's exact arguments with it; for `bash script.sh`, the script
# parses and its own --dry-run passes; for `python -m MODULE`, MODULE is importable.
dry_check() {
    local name=$1
    shift
    command -v "$1" >/dev/null 2>&1 || { echo "dry run: step $name: '$1' not found"; return 1; }
    local help flag note=""
    if [ "$1" = "$PYTHON" ] && [ "${2:-}" = "-m" ] && [ "${3:-}" = "pytest" ]; then
        local collected rc
        collected=$(PYTHONSAFEPATH=1 "$@" --collect-only 2>&1)
        rc=$?
        if [ "$rc" = 5 ] || { [ "$rc" = 0 ] && ! grep -Eq '^[1-9][0-9]*(/[0-9]+)? tests? (collected|selected)' <<<"$collected"; }; then
            echo "dry run: step $name: pytest selected no test"
            return 1
        fi
        [ "$rc" = 0 ] || { echo "dry run: step $name: pytest could not collect (exit $rc):"; tail -5 <<<"$collected"; return 1; }
        note=" ($(grep -E '^[1-9][0-9]*(/[0-9]+)? tests? (collected|selected)' <<<"$collected"))"
    elif [ "$1" = "$PYTHON" ] && [ "${2:-}" = "-m" ] && [ "${3:-}" = "vlmkd" ]; then
        local words=() word
        for word in "${@:4}"; do  # the subcommand chain: plain words up to the first flag or path
            [[ "$word" =~ ^[a-z][a-z0-9-]*$ ]] || break
            words+=("$word")
        done
        help=$(PYTHONSAFEPATH=1 "$PYTHON" -m vlmkd "${words[@]}" --help) || { echo "dry run: step $name: vlmkd ${words[*]} --help failed"; return 1; }
        for flag in "$@"; do
            case "$flag" in
                --*) grep -q -- "$flag\b" <<<"$help" || { echo "dry run: step $name: vlmkd ${words[0]} has no $flag"; return 1; } ;;
            esac
        done
    elif [ "$1" = "$PYTHON" ] && [ "${2:-}" = "-m" ]; then
        "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$3') is None)" || { echo "dry run: step $name: no module $3"; return 1; }
    elif [ "$1" = "$PYTHON" ] && [ "${2:-}" != "-c" ]; then
        help=$(env -u PYTHONSAFEPATH "$PYTHON" "$2" --help) || { echo "dry run: step $name: $2 --help failed"; return 1; }
        for flag in "${@:3}"; do
            case "$flag" in
                --*) grep -q -- "$flag\b" <<<"$help" || { echo "dry run: step $name: $2 has no $flag"; return 1; } ;;
            esac
        done
        if grep -q -- "--dry-run" <<<"$help"; then
            env -u PYTHONSAFEPATH "$@" --dry-run >/dev/null || { echo "dry run: step $name: $2 --dry-run failed on the step's arguments"; return 1; }
        fi
    elif [ "$1" = bash ]; then
        bash -n "$2" || { echo "dry run: step $name: $2 does not parse"; return 1; }
        PYTHON=$PYTHON bash "$2" --dry-run >/dev/null || { echo "dry run: step $name: $2 --dry-run failed"; return 1; }
    fi
    echo "dry run: step $name: $*$note"
}

# step NAME SECONDS COMMAND...: run it under `timeout` (at most what is left of $BUDGET less $RESERVE), log it,
# record the outcome (and its exit status in $LOGS/NAME.exit); a step whose log has a line "NOT RUN: why" is
# recorded as not run (not a failure). In a dry run, check it with dry_check instead.
step() {
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    if [ "$DRY_RUN" = 1 ]; then
        dry_check "$name" "$@" || failures=$((failures + 1))
        return
    fi
    local left=$((BUDGET - SECONDS))
    [ "$name" = targets ] || left=$((left - RESERVE))
    if [ "$left" -lt 10 ]; then
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
    # SIGINT at the limit, not SIGTERM: pytest then still writes its JUnit report of the tests that ran (and
    # python prints where it was); SIGKILL 10 s later if that does not end it.
    env "${path_mode[@]}" timeout -s INT -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "$rc" >"$LOGS/$name.exit"
    local verdict=ok skipped
    skipped=$(grep -m1 '^NOT RUN: ' "$LOGS/$name.log")
    if [ "$rc" != 0 ]; then
        verdict="FAILED (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"
        failures=$((failures + 1))
    elif [ -n "$skipped" ]; then
        verdict="not run (${skipped#NOT RUN: })"
    fi
    record "$name" "$verdict" $((SECONDS - started)) "$@"
}

if [ "$DRY_RUN" = 0 ]; then
    {
        echo "# vlmkd GPU session, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
        "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
        "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
        nvcc --version 2>&1 | grep -m1 release || echo "nvcc: not found"
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

# 0. Versions, and every requirement of pyproject.toml against what is installed (pip checks none with --no-deps).
step env 20 "$PYTHON" benchmarks/gpu/env_check.py

# 1. Build and install for this machine's python and torch: sm_90 only, no build isolation, no index (no
#    registry), dependencies as they are.
step build 150 "$PYTHON" -m pip install -v --no-index --no-build-isolation --no-deps \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 .

# 2. The contrastive loss: eager, torch.compile, Triton, CUDA and the cuBLAS GEMM floor; memory; largest batch.
step contrastive 170 "$PYTHON" benchmarks/gpu/bench_contrastive_gpu.py --out "$OUT" --budget 0.1

# 3. Every test that needs a GPU (torch.compile over the Triton op among them), from the files that have such
#    tests: collecting every file would need packages the machine lacks (tests/test_encode.py imports the
#    packaged text encoder), and one collection error stops pytest before any test.
mapfile -t cuda_test_files < <(grep -l "requires_cuda" tests/test_*.py)
[ "${#cuda_test_files[@]}" -gt 0 ] || cuda_test_files=(tests/no-test-file-names-requires_cuda)  # pytest: not found
step cuda_tests 150 "$PYTHON" -m pytest -q -m requires_cuda -p no:cacheprovider --junitxml "$LOGS/cuda_tests.xml" \
    "${cuda_test_files[@]}"

# 4. A ResNet-50 training step at 224 px under bf16 autocast, channels-last: the VLM-KD term off, reference, Triton,
#    CUDA; images/s, peak memory and the term's share of the step.
step train_r50 90 "$PYTHON" benchmarks/gpu/bench_train_gpu.py --arch resnet50 --image-size 224 --batch 256 \
    --amp bf16 --channels-last --out "$LOGS"
[ "$DRY_RUN" = 0 ] && cp "$LOGS/train_gpu.md" "$OUT/" 2>/dev/null

# 5. The fused loss under bf16 / fp16 autocast, step by step against the reference.
step amp_check 60 "$PYTHON" benchmarks/gpu/amp_check.py --out "$LOGS/amp"

# 6. Captioning on the GPU: each image once for all its prompts vs prompt by prompt, tiny LLaVA-NeXT with
#    LLaVA-NeXT-7B's image-token counts, bf16 (timed) and fp32; images/s, work counted, captions compared.
step caption_shared 90 "$PYTHON" benchmarks/gpu/bench_caption_gpu.py --images 32 --batch-images 8 \
    --dtypes bfloat16 float32 --rounds 3 --out "$LOGS"
[ "$DRY_RUN" = 0 ] && cp "$LOGS/caption_gpu.md" "$OUT/" 2>/dev/null

# 7. `--engine trt` against the pre-#23 feeding, where TensorRT-LLM is installed (else recorded as not run).
step trt 60 bash benchmarks/gpu/trt_step.sh

# 8. vlmkd-train with AMP on the AMP check's data (smoke runs through the CLI).
for amp in bf16 fp16; do
    step "train_$amp" 40 "$PYTHON" -m vlmkd train --train "$LOGS/amp/data/train.txt" \
        --features "$LOGS/amp/data/features" --output "$LOGS/run_$amp" --arch resnet32 --width 0.5 --epochs 2 \
        --batch-size 32 --image-size 32 --vlmkd-weight 1 --task-loss balanced_softmax --contrastive-backend cuda \
        --amp "$amp" --device cuda --num-workers 2 --no-progress
done

# 9. vlmkd-caption on CUDA in bf16 with a tiny random LLaVA (its tokenizer is trained locally: nothing to download).
step tiny_vlm 30 "$PYTHON" -m vlmkd models make-tiny llava "$WORK/llava"
step caption 60 "$PYTHON" -m vlmkd caption "$LOGS/amp/data/train.txt" --model "$WORK/llava" --out "$LOGS/captions" \
    --device cuda --dtype bfloat16 --batch-size 32 --max-new-tokens 16 --no-progress

# 10. DALI decoding on the GPU (device="mixed") against the DataLoader on the same files, where DALI is installed.
if [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
    step loader 60 "$PYTHON" benchmarks/bench_loader.py --quick
elif wanted loader; then
    record loader "not run (nvidia.dali is not installed in this image)" 0 "$PYTHON" benchmarks/bench_loader.py --quick
fi

# 11. Every target of issue #28 item 2, met / NOT met / not measured, with its figure and the versions.
step targets "$RESERVE" "$PYTHON" benchmarks/gpu/targets.py --contrastive "$OUT/contrastive_gpu.json" \
    --tests "$LOGS/cuda_tests.xml" --tests-exit "$LOGS/cuda_tests.exit" --train "$LOGS/train_gpu.json" --out "$LOGS"

if [ "$DRY_RUN" = 0 ]; then
    cp "$LOGS/targets.md" "$OUT/" 2>/dev/null
    {
        echo
        echo "failed steps: $failures"
        echo
        cat "$LOGS/targets.md" 2>/dev/null || echo "(no targets.md: the targets step failed)"
    } >>"$SUMMARY"
    pack
    returned=$(find "$OUT" -maxdepth 1 -type f | wc -l)
    [ "$returned" -le 8 ] || echo "warning: $returned files in $OUT; the device tool returns at most 8"
    cat "$SUMMARY"
else
    echo "dry run: $failures problem(s)"
fi
rm -rf "$WORK"
exit "$failures"
