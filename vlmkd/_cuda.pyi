# Stubs of the private CUDA module (csrc/cuda/module.cu). Pointers are device addresses as ints
# (`tensor.data_ptr()`), 0 meaning "none" where allowed; `stream` is a cudaStream_t as an int; `dtype` is
# "float32" or "float64"; `tf32` (float32 only) puts the similarity products on TF32 tensor cores. Every
# kernel raises RuntimeError when no CUDA device is usable.

runtime_version: int

def device_count() -> int: ...
def device_error() -> str: ...
def normalize_rows(x: int, bias: int, out: int, norm: int, rows: int, cols: int, dtype: str, stream: int) -> None: ...
def normalize_rows_backward(
    grad_hat: int, x_hat: int, norm: int, grad: int, rows: int, cols: int, dtype: str, stream: int
) -> None: ...
def lse_pass_splits(n: int) -> int: ...
def lse_pass(
    a: int,
    b: int,
    labels: int,
    scale: int,
    partial: int,
    n: int,
    d: int,
    class_positives: bool,
    tf32: bool,
    dtype: str,
    stream: int,
) -> None: ...
def grad_pass(
    a: int,
    b: int,
    labels: int,
    scale: int,
    coef: int,
    lse_a: int,
    lse_b: int,
    grad_a: int,
    ds_s: int,
    n: int,
    d: int,
    class_positives: bool,
    tf32: bool,
    dtype: str,
    stream: int,
) -> None: ...
