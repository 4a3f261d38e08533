import numpy as np
import numpy.typing as npt

with_openmp: bool

def max_threads() -> int: ...
def l2_normalize_rows(x: npt.ArrayLike, eps: float = 1e-12) -> np.ndarray: ...
