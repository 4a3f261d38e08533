// The non-GEMM parts of the VLM-KD contrastive loss on the CPU, templated over float and double:
//   - row L2 normalisation (times a scale) and its backward, with the bias gradient as a fused column sum;
//   - the symmetric (multi-positive) InfoNCE over the B x B logit matrix S = scale * v^ u^T: row and column
//     log-sum-exp in one sweep over S (row blocks that stay in cache, online column statistics per thread),
//     then one sweep that overwrites S in place with dL/dS (for an upstream gradient of 1).
// The GEMMs around these stay on PyTorch's BLAS (vlmkd/ops/contrastive_cpp.py). Buffers arrive as numpy
// arrays (zero-copy views of torch CPU tensors); the checks here name the offending argument.
#include "cpu/contrastive.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef VLMKD_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// The per-row and per-block kernels below are compiled for SSE2, AVX2 and AVX-512 and picked at load time
// (GCC function multiversioning), so a portable wheel still runs 16 float lanes where the CPU has them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VLMKD_CLONES __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define VLMKD_CLONES
#endif

namespace vlmkd {
namespace {

int thread_count() {
#ifdef VLMKD_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef VLMKD_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// exp(x) for x <= 0 in a form the compiler vectorises: Cody-Waite range reduction and Cephes' degree-6
// polynomial (about 2 ulp). x is clamped to [-87.3, 0], so anything below -87.3 gives ~1e-38 instead of 0
// (harmless: every sum it feeds also holds a term equal to 1) and masked-out lanes never overflow.
inline float vexp(float x) {
  x = std::min(std::max(x, -87.3f), 0.0f);
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // x / ln 2 rounded to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

inline double vexp(double x) { return std::exp(std::min(x, 0.0)); }

// ---------------------------------------------------------------------------------------------------------
// Row L2 normalisation.

// y = scale * x / max(|x|, eps) for one row of length n; returns |x|. y may alias x.
template <typename T>
VLMKD_CLONES T normalize_row(const T* x, T* y, std::int64_t n, T scale, T eps) {
  T sum_sq = 0;
#pragma omp simd reduction(+ : sum_sq)
  for (std::int64_t c = 0; c < n; ++c) sum_sq += x[c] * x[c];
  const T norm = std::sqrt(sum_sq);
  const T k = scale / std::max(norm, eps);
#pragma omp simd
  for (std::int64_t c = 0; c < n; ++c) y[c] = x[c] * k;
  return norm;
}

template <typename T>
void normalize_rows_impl(const T* x, T* out, T* norms, std::int64_t rows, std::int64_t cols, T scale, T eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) norms[r] = normalize_row(x + r * cols, out + r * cols, cols, scale, eps);
}

// Backward of x^ = x / max(|x|, eps), where the forward stored y = y_scale * x^ and norms = |x|: given
// dL/dx^ = grad_scale * grad, writes dx = (dx^ - x^ (x^ . dx^)) / |x| (just dx^ / eps where |x| <= eps) to out
// (may alias grad) and, when col_sum is given, its column sums.
// One row of normalize_rows_backward_impl; adds the row of dx to acc when acc is not null.
template <typename T>
VLMKD_CLONES void normalize_row_backward(const T* y, const T* grad, T norm, T* out, T* acc, std::int64_t n, T y_scale,
                                         T grad_scale, T eps) {
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (std::int64_t c = 0; c < n; ++c) dot += y[c] * grad[c];
  const T a = grad_scale / std::max(norm, eps);
  const T b = norm > eps ? dot / (y_scale * y_scale) : T(0);
#pragma omp simd
  for (std::int64_t c = 0; c < n; ++c) out[c] = a * (grad[c] - y[c] * b);
  if (acc) {
#pragma omp simd
    for (std::int64_t c = 0; c < n; ++c) acc[c] += out[c];
  }
}

template <typename T>
void normalize_rows_backward_impl(const T* y, const T* grad, const T* norms, T* out, T* col_sum, std::int64_t rows,
                                  std::int64_t cols, T y_scale, T grad_scale, T eps) {
  const int threads = thread_count();
  std::vector<T> partial(col_sum ? std::size_t(threads) * cols : 0, T(0));
#pragma omp parallel
  {
    T* acc = col_sum ? partial.data() + std::size_t(thread_id()) * cols : nullptr;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t at = r * cols;
      normalize_row_backward(y + at, grad + at, norms[r], out + at, acc, cols, y_scale, grad_scale, eps);
    }
  }
  if (col_sum) {  // fixed summation order: the result does not depend on thread timing
    std::fill(col_sum, col_sum + cols, T(0));
    for (int t = 0; t < threads; ++t) {
      const T* p = partial.data() + std::size_t(t) * cols;
      for (std::int64_t c = 0; c < cols; ++c) col_sum[c] += p[c];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Symmetric InfoNCE over S, gradient in place.
//
// The positives of anchor i (row i and column i) are the anchors with its label: in instance mode just i.
// The sweeps over all of S handle the "all pairs" half of the loss, vectorised; the positive half touches
// only the positive pairs, gathered through the label groups, so class mode costs what instance mode costs
// plus O(number of positive pairs).

// Anchors grouped by label: group g is order[start[g] .. start[g + 1]), group_of[i] is anchor i's group.
struct Groups {
  std::vector<std::int64_t> order, start, group_of;
  std::int64_t largest = 1;

  const std::int64_t* members(std::int64_t i) const { return order.data() + start[group_of[i]]; }
  std::int64_t count(std::int64_t i) const { return start[group_of[i] + 1] - start[group_of[i]]; }
};

// Groups of equal labels, or one group per anchor when labels is null (instance positives).
Groups group_labels(const std::int64_t* labels, std::int64_t n) {
  Groups groups;
  groups.order.resize(n);
  groups.group_of.resize(n);
  std::iota(groups.order.begin(), groups.order.end(), 0);
  if (labels) {
    std::stable_sort(groups.order.begin(), groups.order.end(),
                     [&](std::int64_t a, std::int64_t b) { return labels[a] < labels[b]; });
  }
  for (std::int64_t k = 0; k < n; ++k) {
    const std::int64_t i = groups.order[k];
    if (k == 0 || !labels || labels[i] != labels[groups.order[k - 1]]) groups.start.push_back(k);
    groups.group_of[i] = std::int64_t(groups.start.size()) - 1;
  }
  groups.start.push_back(n);
  for (std::size_t g = 0; g + 1 < groups.start.size(); ++g) {
    groups.largest = std::max(groups.largest, groups.start[g + 1] - groups.start[g]);
  }
  return groups;
}

// log-sum-exp of x[at[k] * stride] over k < count (count >= 1): a gather along a row or down a column.
template <typename T>
T gathered_lse(const T* x, const std::int64_t* at, std::int64_t count, std::int64_t stride) {
  T m = -std::numeric_limits<T>::max();
  for (std::int64_t k = 0; k < count; ++k) m = std::max(m, x[at[k] * stride]);
  T sum = 0;
  for (std::int64_t k = 0; k < count; ++k) sum += vexp(x[at[k] * stride] - m);
  return m + std::log(sum);
}

// Running (max, sum of exp(s - max)) of every column, one set per thread, updated one row block at a time.
template <typename T>
struct ColumnStats {
  T* max;
  T* sum;
};

// log-sum-exp of one row of S.
template <typename T>
VLMKD_CLONES T row_lse(const T* row, std::int64_t n) {
  T m = -std::numeric_limits<T>::max();
#pragma omp simd reduction(max : m)
  for (std::int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (std::int64_t j = 0; j < n; ++j) sum += vexp(row[j] - m);
  return m + std::log(sum);
}

// Folds rows [r0, r1) of S into the running column statistics; `block_max` is scratch of length n.
template <typename T>
VLMKD_CLONES void fold_rows_into_columns(const T* s, std::int64_t r0, std::int64_t r1, std::int64_t n,
                                         ColumnStats<T> stats, T* block_max) {
  std::fill(block_max, block_max + n, -std::numeric_limits<T>::max());
  for (std::int64_t i = r0; i < r1; ++i) {
    const T* row = s + i * n;
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) block_max[j] = std::max(block_max[j], row[j]);
  }
#pragma omp simd
  for (std::int64_t j = 0; j < n; ++j) {
    const T m = std::max(stats.max[j], block_max[j]);
    stats.sum[j] *= vexp(stats.max[j] - m);
    stats.max[j] = m;
  }
  for (std::int64_t i = r0; i < r1; ++i) {
    const T* row = s + i * n;
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) stats.sum[j] += vexp(row[j] - stats.max[j]);
  }
}

// Combines the per-thread column statistics into one log-sum-exp per column.
template <typename T>
void merge_columns(const std::vector<T>& max, const std::vector<T>& sum, int threads, std::int64_t n, T* lse) {
  for (std::int64_t j = 0; j < n; ++j) {
    T m = -std::numeric_limits<T>::max();
    for (int t = 0; t < threads; ++t) m = std::max(m, max[std::size_t(t) * n + j]);
    T total = 0;
    for (int t = 0; t < threads; ++t) total += sum[std::size_t(t) * n + j] * vexp(max[std::size_t(t) * n + j] - m);
    lse[j] = m + std::log(total);
  }
}

// Overwrites one row of S with dL/dS = (softmax_row + softmax_col - their positive parts) / 2n and returns
// sum(dL/dS * S). `positives` lists the row's positive columns; `saved` is scratch for their logits.
template <typename T>
VLMKD_CLONES T grad_row(T* row, std::int64_t n, T lse, const T* col_lse, const std::int64_t* positives,
                        std::int64_t count, T pos_lse, const T* col_pos_lse, T* saved) {
  const T c = T(0.5) / T(n);
  for (std::int64_t k = 0; k < count; ++k) saved[k] = row[positives[k]];
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (std::int64_t j = 0; j < n; ++j) {
    const T x = row[j];
    const T g = c * (vexp(x - lse) + vexp(x - col_lse[j]));
    dot += g * x;
    row[j] = g;
  }
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t j = positives[k];
    const T x = saved[k];
    const T positive_part = c * (vexp(x - pos_lse) + vexp(x - col_pos_lse[j]));
    row[j] -= positive_part;
    dot -= positive_part * x;
  }
  return dot;
}

// Rows per block: about 128 KiB of S, so a block is read from memory once and then from cache.
std::int64_t rows_per_block(std::int64_t n, std::size_t elem_size) {
  const std::int64_t rows = std::int64_t(128 * 1024 / (std::size_t(n) * elem_size));
  return std::clamp<std::int64_t>(rows, 1, 64);
}

// Loss and sum(dL/dS * S); S (n x n) is overwritten with dL/dS.
template <typename T>
std::pair<double, double> contrastive_grad_impl(T* s, const Groups& groups, std::int64_t n) {
  const int threads = thread_count();
  std::vector<T> row_all(n), col_all(n), row_pos(n), col_pos(n);
  const std::size_t stats_len = std::size_t(threads) * n;
  std::vector<T> col_max(stats_len, -std::numeric_limits<T>::max()), col_sum(stats_len, T(0));
  const std::int64_t block = rows_per_block(n, sizeof(T));
  const std::int64_t blocks = (n + block - 1) / block;

#pragma omp parallel
  {
    const std::size_t offset = std::size_t(thread_id()) * n;
    std::vector<T> scratch(n);
#pragma omp for schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {  // the positives, gathered
      row_pos[i] = gathered_lse(s + i * n, groups.members(i), groups.count(i), 1);
      col_pos[i] = gathered_lse(s + i, groups.members(i), groups.count(i), n);
    }
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {  // all pairs: one sweep over S, a cached row block at a time
      const std::int64_t r0 = b * block, r1 = std::min(n, r0 + block);
      for (std::int64_t i = r0; i < r1; ++i) row_all[i] = row_lse(s + i * n, n);
      fold_rows_into_columns<T>(s, r0, r1, n, {col_max.data() + offset, col_sum.data() + offset}, scratch.data());
    }
  }
  merge_columns(col_max, col_sum, threads, n, col_all.data());

  double loss = 0;
  for (std::int64_t i = 0; i < n; ++i) loss += double(row_all[i] - row_pos[i]) + double(col_all[i] - col_pos[i]);
  loss /= 2.0 * double(n);

  double grad_dot_s = 0;
#pragma omp parallel reduction(+ : grad_dot_s)
  {
    std::vector<T> saved(groups.largest);
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      grad_dot_s += double(grad_row(s + i * n, n, row_all[i], col_all.data(), groups.members(i), groups.count(i),
                                    row_pos[i], col_pos.data(), saved.data()));
    }
  }
  return {loss, grad_dot_s};
}

// ---------------------------------------------------------------------------------------------------------
// Python boundary: numpy arrays, checked by name.

std::string shape_text(const std::vector<py::ssize_t>& shape) {
  std::string text = "(";
  for (std::size_t k = 0; k < shape.size(); ++k) text += (k ? ", " : "") + std::to_string(shape[k]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// Throws ValueError unless `a` is a C-contiguous array of `dtype` and `shape` (writable when `writable`).
void check_array(const py::array& a, const char* name, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
                 bool writable) {
  const bool ok = a.dtype().is(dtype) && shape_of(a) == shape && (a.flags() & py::array::c_style);
  if (!ok) {
    throw std::invalid_argument(std::string(name) + " must be a C-contiguous " + std::string(py::str(dtype)) + " " +
                                shape_text(shape) + " array, got " + std::string(py::str(a.dtype())) + " " +
                                shape_text(shape_of(a)) + ((a.flags() & py::array::c_style) ? "" : " (strided)"));
  }
  if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + " must be writable");
}

void check_rank(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) + " dimension(s), got " +
                                std::to_string(a.ndim()));
  }
}

// Calls fn(T{}) with T = float or double, the dtype of `a`.
template <typename Fn>
auto by_dtype(const py::array& a, const char* name, Fn&& fn) {
  if (a.dtype().is(py::dtype::of<float>())) return fn(float{});
  if (a.dtype().is(py::dtype::of<double>())) return fn(double{});
  throw std::invalid_argument(std::string(name) + " must be float32 or float64, got " +
                              std::string(py::str(a.dtype())));
}

void normalize_rows(const py::array& x, py::array& out, py::array& norms, double scale, double eps) {
  check_rank(x, "x", 2);
  const py::ssize_t rows = x.shape(0), cols = x.shape(1);
  by_dtype(x, "x", [&](auto zero) {
    using T = decltype(zero);
    const auto dtype = py::dtype::of<T>();
    check_array(x, "x", dtype, {rows, cols}, false);
    check_array(out, "out", dtype, {rows, cols}, true);
    check_array(norms, "norms", dtype, {rows}, true);
    const T* src = static_cast<const T*>(x.data());
    T* dst = static_cast<T*>(out.mutable_data());
    T* nrm = static_cast<T*>(norms.mutable_data());
    py::gil_scoped_release release;
    normalize_rows_impl<T>(src, dst, nrm, rows, cols, T(scale), T(eps));
  });
}

void normalize_rows_backward(const py::array& y, const py::array& grad, const py::array& norms, py::array& out,
                             const py::object& col_sum, double y_scale, double grad_scale, double eps) {
  check_rank(y, "y", 2);
  const py::ssize_t rows = y.shape(0), cols = y.shape(1);
  by_dtype(y, "y", [&](auto zero) {
    using T = decltype(zero);
    const auto dtype = py::dtype::of<T>();
    check_array(y, "y", dtype, {rows, cols}, false);
    check_array(grad, "grad", dtype, {rows, cols}, false);
    check_array(norms, "norms", dtype, {rows}, false);
    check_array(out, "out", dtype, {rows, cols}, true);
    T* sums = nullptr;
    if (!col_sum.is_none()) {
      auto array = col_sum.cast<py::array>();
      check_array(array, "col_sum", dtype, {cols}, true);
      sums = static_cast<T*>(array.mutable_data());
    }
    const T* yp = static_cast<const T*>(y.data());
    const T* gp = static_cast<const T*>(grad.data());
    const T* np_ = static_cast<const T*>(norms.data());
    T* op = static_cast<T*>(out.mutable_data());
    py::gil_scoped_release release;
    normalize_rows_backward_impl<T>(yp, gp, np_, op, sums, rows, cols, T(y_scale), T(grad_scale), T(eps));
  });
}

std::pair<double, double> contrastive_grad(py::array& s, const py::array& labels, bool class_positives) {
  check_rank(s, "s", 2);
  const py::ssize_t n = s.shape(0);
  check_array(labels, "labels", py::dtype::of<std::int64_t>(), {n}, false);
  return by_dtype(s, "s", [&](auto zero) {
    using T = decltype(zero);
    check_array(s, "s", py::dtype::of<T>(), {n, n}, true);
    T* sp = static_cast<T*>(s.mutable_data());
    const auto* lp = static_cast<const std::int64_t*>(labels.data());
    py::gil_scoped_release release;
    if (n == 0) return std::pair<double, double>{0.0, 0.0};
    return contrastive_grad_impl<T>(sp, group_labels(class_positives ? lp : nullptr, n), n);
  });
}

}  // namespace

void bind_contrastive(py::module_& m) {
  m.def("normalize_rows", &normalize_rows, py::arg("x"), py::arg("out"), py::arg("norms"), py::arg("scale") = 1.0,
        py::arg("eps") = 1e-12,
        "out = scale * x / max(|x|, eps) row by row and norms = |x| (float32 or float64; out may be x).");
  m.def("normalize_rows_backward", &normalize_rows_backward, py::arg("y"), py::arg("grad"), py::arg("norms"),
        py::arg("out"), py::arg("col_sum") = py::none(), py::arg("y_scale") = 1.0, py::arg("grad_scale") = 1.0,
        py::arg("eps") = 1e-12,
        "Gradient w.r.t. x of y = y_scale * x / max(|x|, eps), given grad_scale * grad w.r.t. y / y_scale; "
        "writes it to out (may be grad) and its column sums to col_sum.");
  m.def("contrastive_grad_", &contrastive_grad, py::arg("s"), py::arg("labels"), py::arg("class_positives"),
        "Symmetric InfoNCE over logits s (B, B); overwrites s with dL/ds and returns (loss, sum(dL/ds * s)).");
}

}  // namespace vlmkd
