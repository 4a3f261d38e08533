#!/usr/bin/env bash
# GPU step for `--engine trt` (issue #23), to be wired into benchmarks/gpu/run.sh: where TensorRT-LLM is
# importable, caption a tiny random LLaVA-NeXT (or $TRT_MODEL, a LLaVA-NeXT checkpoint directory) with the
# pre-#23 feeding (input loader + blocking generate per batch) and with vlmkd's engine (generate_async, thousands
# in flight), interleaved, and print captions/s and host CPU per caption; elsewhere print "not installed".
#
#   bash benchmarks/gpu/trt_step.sh            # from the repository root; PYTHON picks the interpreter
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import tensorrt_llm" >/dev/null 2>&1; then
    echo "trt step: TensorRT-LLM not installed (import tensorrt_llm failed); skipped"
    exit 0
fi
model_args=()
[ -n "${TRT_MODEL:-}" ] && model_args=(--model "$TRT_MODEL")
exec "$PYTHON" benchmarks/bench_trt_feeding.py --real --images "${TRT_IMAGES:-256}" --rounds "${TRT_ROUNDS:-2}" \
    --batch-size 64 "${model_args[@]}"
