import numpy as np

with_openmp: bool

def max_threads() -> int: ...

# Contrastive loss (csrc/cpu/contrastive.cpp). Arrays are C-contiguous float32 or float64 (all the same),
# labels int64; outputs are written in place.
def normalize_rows(
    x: np.ndarray, out: np.ndarray, norms: np.ndarray, scale: float = 1.0, eps: float = 1e-12
) -> None: ...
def normalize_rows_backward(
    y: np.ndarray,
    grad: np.ndarray,
    norms: np.ndarray,
    out: np.ndarray,
    col_sum: np.ndarray | None = None,
    y_scale: float = 1.0,
    grad_scale: float = 1.0,
    eps: float = 1e-12,
) -> None: ...
def contrastive_grad_(s: np.ndarray, labels: np.ndarray, class_positives: bool) -> tuple[float, float]: ...
