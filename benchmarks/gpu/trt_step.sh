#!/usr/bin/env bash
# GPU step for `--engine trt` (issue #23), run by benchmarks/gpu/run.sh: where TensorRT-LLM is importable,
# caption a tiny random LLaVA-NeXT (or $TRT_MODEL, a LLaVA-NeXT checkpoint directory) with the pre-#23 feeding
# (input loader + blocking generate per batch) and with vlmkd's engine (generate_async, thousands in flight),
# interleaved, and print captions/s and host CPU per caption; elsewhere print "NOT RUN: TensorRT-LLM not
# installed" (run.sh records the step as not run) and exit 0.
#
#   bash benchmarks/gpu/trt_step.sh            # from the repository root; PYTHON picks the interpreter
#   bash benchmarks/gpu/trt_step.sh --dry-run  # anywhere: checks that the benchmark parses its arguments
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PYTHON=${PYTHON:-python3}
model_args=()
[ -n "${TRT_MODEL:-}" ] && model_args=(--model "$TRT_MODEL")
command=("$PYTHON" benchmarks/bench_trt_feeding.py --real --images "${TRT_IMAGES:-256}" --rounds "${TRT_ROUNDS:-2}"
    --batch-size 64 "${model_args[@]}")
if [ "${1:-}" = "--dry-run" ]; then
    help=$("$PYTHON" benchmarks/bench_trt_feeding.py --help) || { echo "trt step: bench_trt_feeding.py --help failed"; exit 1; }
    for flag in "${command[@]}"; do
        case "$flag" in
            --*) grep -q -- "$flag\b" <<<"$help" || { echo "trt step: bench_trt_feeding.py has no $flag"; exit 1; } ;;
        esac
    done
    echo "trt step: ${command[*]}"
    exit 0
fi
if ! "$PYTHON" -c "import tensorrt_llm" >/dev/null 2>&1; then
    echo "NOT RUN: TensorRT-LLM not installed (import tensorrt_llm failed)"
    exit 0
fi
exec "${command[@]}"
