// The non-GEMM parts of the fused VLM-KD contrastive loss on the CPU (see contrastive.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace vlmkd {

// Adds normalize_rows, normalize_rows_backward and contrastive_grad_ to the module.
void bind_contrastive(pybind11::module_& m);

}  // namespace vlmkd
