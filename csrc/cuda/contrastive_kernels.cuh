// Device code of the fused contrastive loss (no launches): included by contrastive.cu, which launches it,
// and by the host-side emulator of tests/cuda_emulation, which runs it on the CPU under test.
//
// Tiling: a block owns a 64-row tile of A and walks the 64-column tiles of B. Each S tile is a small GEMM
// over K chunks staged in shared memory; each of the 16 x 16 threads holds a 4 x 4 micro-tile of S in
// registers (rows ty + 16 i, columns tx + 16 j), so the 16 threads of one row are one half-warp and row
// reductions are shuffles. The LSE pass keeps an online (max, sum) per row; the gradient pass stages dS in
// shared memory and multiplies it into a 64 x kBD accumulator of dA, so memory stays linear in B.
#pragma once

#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>

namespace vlmkd::cuda::detail {


constexpr int kTile = 64;                  // rows and columns of an S tile
constexpr int kSide = 16;                  // threads per side of a block
constexpr int kThreads = kSide * kSide;    // threads per block
constexpr int kMicro = kTile / kSide;      // micro-tile side per thread
constexpr int kLd = kTile + 4;             // row stride of shared tiles: WMMA wants a multiple of 4 floats
constexpr int kFrag = 16;                  // side of a WMMA tile (m16n16k8, TF32)
constexpr int kFragK = 8;
static_assert(kThreads == 256 && kTile == 4 * kFrag, "TF32 tiles assume 8 warps over 4 x 2 fragment blocks");
constexpr int kTargetBlocks = 512;         // LSE passes split columns until they launch about this many blocks
constexpr double kNormEps = 1e-12;         // as torch.nn.functional.normalize
constexpr int kNormThreads = 256;          // normalisation kernels: one warp per row
constexpr int kRowsPerNormBlock = kNormThreads / 32;

template <typename T>
struct Config;
template <>
struct Config<float> {
  static constexpr int kK = 16;    // K chunk of the S GEMM
  static constexpr int kBD = 256;  // columns of dA per block in the gradient pass
};
template <>
struct Config<double> {
  static constexpr int kK = 8;
  static constexpr int kBD = 128;
};

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ T dev_max(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over the kSide lanes that share a row of micro-tiles (one half-warp).
template <typename T>
__device__ __forceinline__ T row_sum(T value) {
  for (int offset = kSide / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset, kSide);
  return value;
}

// Merge online (max, sum) pairs over the kSide lanes of a row: sum becomes sum_lanes sum_l exp(max_l - max).
template <typename T>
__device__ __forceinline__ void row_merge_lse(T& max_value, T& sum) {
  for (int offset = kSide / 2; offset > 0; offset /= 2) {
    const T other_max = __shfl_xor_sync(0xffffffffu, max_value, offset, kSide);
    const T other_sum = __shfl_xor_sync(0xffffffffu, sum, offset, kSide);
    const T merged = dev_max(max_value, other_max);
    sum = sum * dev_exp(max_value - merged) + other_sum * dev_exp(other_max - merged);
    max_value = merged;
  }
}

// max + log(sum), or -inf for an empty sum.
template <typename T>
__device__ __forceinline__ T log_sum(T max_value, T sum) {
  return sum > T(0) ? max_value + dev_log(sum) : T(-INFINITY);
}

__device__ __forceinline__ bool is_positive(bool class_positives, int64_t row, int64_t col, int64_t row_label,
                                            int64_t col_label) {
  return class_positives ? row_label == col_label : row == col;
}

template <typename T>
struct alignas(32) TileSmem {
  T a[Config<T>::kK][kLd];  // A^T chunk: a[k][r] = A[row0 + r][k0 + k]
  T b[Config<T>::kK][kLd];  // B^T chunk
};

// Rounds every element of a WMMA operand fragment to TF32, as the TF32 mma requires.
template <typename Fragment>
__device__ __forceinline__ void round_to_tf32(Fragment& fragment) {
#pragma unroll
  for (int t = 0; t < fragment.num_elements; ++t) fragment.x[t] = nvcuda::wmma::__float_to_tf32(fragment.x[t]);
}

// acc[i][j] = <A[row0 + ty + 16 i], B[col0 + tx + 16 j]> (0 outside n); ends after a __syncthreads.
// kTF32 (float only): the tile comes from tensor cores (each warp computes 16 x 32 of it in TF32) through
// `stage` (kTile x kLd in shared memory), which the caller must not overwrite before its next barrier.
template <typename T, bool kTF32>
__device__ __forceinline__ void similarity_tile(const T* __restrict__ a, const T* __restrict__ b, int64_t row0,
                                                int64_t col0, int64_t n, int64_t d, TileSmem<T>& smem, T* stage,
                                                T (&acc)[kMicro][kMicro]) {
  static_assert(!kTF32 || sizeof(T) == 4, "TF32 tiles are for float");
  namespace wmma = nvcuda::wmma;
  constexpr int kK = Config<T>::kK;
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int warp = threadIdx.x / 32;
  const int frag_row = (warp / 2) * kFrag;       // 8 warps: 4 fragment rows x 2 halves of 32 columns
  const int frag_col = (warp % 2) * 2 * kFrag;
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFragK, float> tile[kTF32 ? 2 : 1];
  if constexpr (kTF32) {
    wmma::fill_fragment(tile[0], 0.0f);
    wmma::fill_fragment(tile[1], 0.0f);
  }
#pragma unroll
  for (int i = 0; i < kMicro; ++i)
#pragma unroll
    for (int j = 0; j < kMicro; ++j) acc[i][j] = T(0);
  for (int64_t k0 = 0; k0 < d; k0 += kK) {
    for (int e = threadIdx.x; e < kTile * kK; e += kThreads) {
      const int r = e / kK;
      const int k = e % kK;
      const bool k_ok = k0 + k < d;
      smem.a[k][r] = (k_ok && row0 + r < n) ? a[(row0 + r) * d + k0 + k] : T(0);
      smem.b[k][r] = (k_ok && col0 + r < n) ? b[(col0 + r) * d + k0 + k] : T(0);
    }
    __syncthreads();
    if constexpr (kTF32) {
#pragma unroll
      for (int k = 0; k < kK; k += kFragK) {
        wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFragK, wmma::precision::tf32, wmma::col_major> a_frag;
        wmma::load_matrix_sync(a_frag, &smem.a[k][frag_row], kLd);
        round_to_tf32(a_frag);
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFragK, wmma::precision::tf32, wmma::row_major> b_frag;
          wmma::load_matrix_sync(b_frag, &smem.b[k][frag_col + f * kFrag], kLd);
          round_to_tf32(b_frag);
          wmma::mma_sync(tile[f], a_frag, b_frag, tile[f]);
        }
      }
    } else {
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        T av[kMicro];
        T bv[kMicro];
#pragma unroll
        for (int i = 0; i < kMicro; ++i) av[i] = smem.a[k][ty + kSide * i];
#pragma unroll
        for (int j = 0; j < kMicro; ++j) bv[j] = smem.b[k][tx + kSide * j];
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
          for (int j = 0; j < kMicro; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
  if constexpr (kTF32) {
    for (int f = 0; f < 2; ++f)
      wmma::store_matrix_sync(stage + frag_row * kLd + frag_col + f * kFrag, tile[f], kLd, wmma::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) acc[i][j] = stage[(ty + kSide * i) * kLd + tx + kSide * j];
  }
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    normalize_rows_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out,
                          T* __restrict__ norm, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves together
  const T* x_row = x + row * cols;
  T squares = T(0);
  for (int64_t c = lane; c < cols; c += 32) {
    const T y = x_row[c] + (bias != nullptr ? bias[c] : T(0));
    squares += y * y;
  }
  const T row_norm = dev_sqrt(warp_sum(squares));
  const T inverse = T(1) / dev_max(row_norm, T(kNormEps));
  for (int64_t c = lane; c < cols; c += 32) out[row * cols + c] = (x_row[c] + (bias != nullptr ? bias[c] : T(0))) * inverse;
  if (lane == 0) norm[row] = row_norm;
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    normalize_rows_backward_kernel(const T* __restrict__ grad_hat, const T* __restrict__ x_hat,
                                   const T* __restrict__ norm, T* __restrict__ grad, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t offset = row * cols;
  T radial = T(0);
  for (int64_t c = lane; c < cols; c += 32) radial += x_hat[offset + c] * grad_hat[offset + c];
  radial = warp_sum(radial);
  const bool above = norm[row] > T(kNormEps);
  const T inverse = T(1) / dev_max(norm[row], T(kNormEps));
  for (int64_t c = lane; c < cols; c += 32) {
    const T g = grad_hat[offset + c];
    grad[offset + c] = (above ? g - x_hat[offset + c] * radial : g) * inverse;
  }
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads)
    lse_pass_kernel(const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ labels,
                    const T* __restrict__ scale_ptr, T* __restrict__ partial, int64_t n, int64_t d,
                    int64_t cols_per_split, bool class_positives) {
  __shared__ TileSmem<T> smem;
  alignas(32) __shared__ T stage[kTF32 ? kTile * kLd : 1];
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int64_t row0 = int64_t(blockIdx.x) * kTile;
  const int64_t col_begin = int64_t(blockIdx.y) * cols_per_split;
  const int64_t col_end = col_begin + cols_per_split < n ? col_begin + cols_per_split : n;
  const T scale = *scale_ptr;

  int64_t row[kMicro];
  int64_t row_label[kMicro];
  // Running maxima start at -scale, a lower bound of every S_ij of unit rows: they stay finite, so no
  // -inf - -inf appears before a row meets its first positive.
  T max_all[kMicro], sum_all[kMicro], max_pos[kMicro], sum_pos[kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    row[i] = row0 + ty + kSide * i;
    row_label[i] = (class_positives && row[i] < n) ? labels[row[i]] : 0;
    max_all[i] = max_pos[i] = -scale;
    sum_all[i] = sum_pos[i] = T(0);
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kTile) {
    T acc[kMicro][kMicro];
    similarity_tile<T, kTF32>(a, b, row0, col0, n, d, smem, stage, acc);
    int64_t col[kMicro];
    int64_t col_label[kMicro];
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      col[j] = col0 + tx + kSide * j;
      col_label[j] = (class_positives && col[j] < n) ? labels[col[j]] : 0;
    }
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      if (row[i] >= n) continue;
      T new_all = max_all[i];
      T new_pos = max_pos[i];
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        if (col[j] >= n) continue;
        const T s = scale * acc[i][j];
        new_all = dev_max(new_all, s);
        if (is_positive(class_positives, row[i], col[j], row_label[i], col_label[j])) new_pos = dev_max(new_pos, s);
      }
      sum_all[i] *= dev_exp(max_all[i] - new_all);
      sum_pos[i] *= dev_exp(max_pos[i] - new_pos);
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        if (col[j] >= n) continue;
        const T s = scale * acc[i][j];
        sum_all[i] += dev_exp(s - new_all);
        if (is_positive(class_positives, row[i], col[j], row_label[i], col_label[j])) sum_pos[i] += dev_exp(s - new_pos);
      }
      max_all[i] = new_all;
      max_pos[i] = new_pos;
    }
  }

  T* out = partial + int64_t(blockIdx.y) * 2 * n;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    row_merge_lse(max_all[i], sum_all[i]);
    row_merge_lse(max_pos[i], sum_pos[i]);
    if (tx == 0 && row[i] < n) {
      out[row[i]] = log_sum(max_all[i], sum_all[i]);
      out[n + row[i]] = log_sum(max_pos[i], sum_pos[i]);
    }
  }
}

template <typename T>
union alignas(32) GradSmem {
  TileSmem<T> tile;                        // while an S tile is computed
  T b_sub[Config<T>::kK][Config<T>::kBD];  // while dS is multiplied into dA
};

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads)
    grad_pass_kernel(const T* __restrict__ a, const T* __restrict__ b, const int64_t* __restrict__ labels,
                     const T* __restrict__ scale_ptr, const T* __restrict__ coef_ptr, const T* __restrict__ lse_a,
                     const T* __restrict__ lse_b, T* __restrict__ grad_a, T* __restrict__ ds_s, int64_t n,
                     int64_t d, bool class_positives) {
  namespace wmma = nvcuda::wmma;
  constexpr int kK = Config<T>::kK;
  constexpr int kBD = Config<T>::kBD;
  constexpr int kMicroD = kBD / kSide;
  constexpr int kWarpFrags = kBD / (2 * kFrag);  // TF32: 8 warps = 4 fragment rows x 2 halves of kBD columns
  __shared__ GradSmem<T> smem;
  alignas(32) __shared__ T ds_tile[kTile][kLd];  // dS tile; with kTF32 also the S staging and the output staging
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int frag_row = (warp / 2) * kFrag;
  const int frag_col = (warp % 2) * (kBD / 2);
  const int64_t row0 = int64_t(blockIdx.x) * kTile;
  const int64_t dcol0 = int64_t(blockIdx.y) * kBD;
  const T scale = *scale_ptr;
  const T coef = *coef_ptr;

  int64_t row[kMicro];
  int64_t row_label[kMicro];
  T row_all[kMicro], row_pos[kMicro], ds_s_acc[kMicro];
  T grad_acc[kTF32 ? 1 : kMicro][kTF32 ? 1 : kMicroD];
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFragK, float> grad_frag[kTF32 ? kWarpFrags : 1];
  if constexpr (kTF32) {
#pragma unroll
    for (int f = 0; f < kWarpFrags; ++f) wmma::fill_fragment(grad_frag[f], 0.0f);
  } else {
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicroD; ++j) grad_acc[i][j] = T(0);
  }
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    row[i] = row0 + ty + kSide * i;
    const bool ok = row[i] < n;
    row_label[i] = (class_positives && ok) ? labels[row[i]] : 0;
    row_all[i] = ok ? lse_a[row[i]] : T(0);
    row_pos[i] = ok ? lse_a[n + row[i]] : T(0);
    ds_s_acc[i] = T(0);
  }

  for (int64_t col0 = 0; col0 < n; col0 += kTile) {
    T acc[kMicro][kMicro];
    similarity_tile<T, kTF32>(a, b, row0, col0, n, d, smem.tile, &ds_tile[0][0], acc);
    if constexpr (kTF32) __syncthreads();  // every thread has read its S from ds_tile before dS overwrites it
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = col0 + tx + kSide * j;
      const bool col_ok = col < n;
      const int64_t col_label = (class_positives && col_ok) ? labels[col] : 0;
      const T col_all = col_ok ? lse_b[col] : T(0);
      const T col_pos = col_ok ? lse_b[n + col] : T(0);
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        T ds = T(0);
        if (col_ok && row[i] < n) {
          const T s = scale * acc[i][j];
          T prob = dev_exp(s - row_all[i]) + dev_exp(s - col_all);
          // Only on positives: elsewhere exp(s - lse_pos) may overflow (up to e^(2 scale)).
          if (is_positive(class_positives, row[i], col, row_label[i], col_label))
            prob -= dev_exp(s - row_pos[i]) + dev_exp(s - col_pos);
          ds = coef * prob;
          ds_s_acc[i] += ds * s;
        }
        ds_tile[ty + kSide * i][tx + kSide * j] = ds;
      }
    }
    // No barrier needed here: the first one below (after staging b_sub) also orders these ds_tile writes
    // before their reads.
    for (int k0 = 0; k0 < kTile; k0 += kK) {
      for (int e = threadIdx.x; e < kK * kBD; e += kThreads) {
        const int k = e / kBD;
        const int c = e % kBD;
        const int64_t col = col0 + k0 + k;
        smem.b_sub[k][c] = (col < n && dcol0 + c < d) ? b[col * d + dcol0 + c] : T(0);
      }
      __syncthreads();
      if constexpr (kTF32) {
#pragma unroll
        for (int k = 0; k < kK; k += kFragK) {
          wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFragK, wmma::precision::tf32, wmma::row_major> a_frag;
          wmma::load_matrix_sync(a_frag, &ds_tile[frag_row][k0 + k], kLd);
          round_to_tf32(a_frag);
#pragma unroll
          for (int f = 0; f < kWarpFrags; ++f) {
            wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFragK, wmma::precision::tf32, wmma::row_major> b_frag;
            wmma::load_matrix_sync(b_frag, &smem.b_sub[k][frag_col + f * kFrag], kBD);
            round_to_tf32(b_frag);
            wmma::mma_sync(grad_frag[f], a_frag, b_frag, grad_frag[f]);
          }
        }
      } else {
#pragma unroll
        for (int k = 0; k < kK; ++k) {
          T dv[kMicro];
#pragma unroll
          for (int i = 0; i < kMicro; ++i) dv[i] = ds_tile[ty + kSide * i][k0 + k];
#pragma unroll
          for (int j = 0; j < kMicroD; ++j) {
            const T bv = smem.b_sub[k][tx + kSide * j];
#pragma unroll
            for (int i = 0; i < kMicro; ++i) grad_acc[i][j] += dv[i] * bv;
          }
        }
      }
      __syncthreads();
    }
  }

  if constexpr (kTF32) {
    // Through a 16 x 16 staging area per warp (in ds_tile, free after the last barrier) so that ragged
    // edges can be masked.
    T* staging = &ds_tile[0][0] + warp * kFrag * kFrag;
    for (int f = 0; f < kWarpFrags; ++f) {
      wmma::store_matrix_sync(staging, grad_frag[f], kFrag, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < kFrag * kFrag; e += 32) {
        const int64_t out_row = row0 + frag_row + e / kFrag;
        const int64_t out_col = dcol0 + frag_col + f * kFrag + e % kFrag;
        if (out_row < n && out_col < d) grad_a[out_row * d + out_col] = scale * staging[e];
      }
      __syncwarp();
    }
  } else {
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      if (row[i] >= n) continue;
#pragma unroll
      for (int j = 0; j < kMicroD; ++j) {
        const int64_t dcol = dcol0 + tx + kSide * j;
        if (dcol < d) grad_a[row[i] * d + dcol] = scale * grad_acc[i][j];
      }
    }
  }
  if (ds_s != nullptr && blockIdx.y == 0) {  // uniform over the block: every lane takes part in the shuffles
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      const T total = row_sum(ds_s_acc[i]);
      if (tx == 0 && row[i] < n) ds_s[row[i]] = total;
    }
  }
}

// Launch geometry, shared by the launchers and the emulator.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline dim3 normalize_grid(int64_t rows) { return dim3(static_cast<unsigned>(ceil_div(rows, kRowsPerNormBlock))); }

// Column tiles per split of an LSE pass: split columns until about kTargetBlocks blocks run.
inline int64_t lse_tiles_per_split(int64_t n) {
  const int64_t blocks = ceil_div(n, kTile);
  const int64_t wanted = ceil_div(kTargetBlocks, blocks);
  return ceil_div(blocks, wanted < blocks ? wanted : blocks);
}

inline dim3 lse_pass_grid(int64_t n) {
  const int64_t blocks = ceil_div(n, kTile);
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(ceil_div(blocks, lse_tiles_per_split(n))));
}

template <typename T>
dim3 grad_pass_grid(int64_t n, int64_t d) {
  return dim3(static_cast<unsigned>(ceil_div(n, kTile)), static_cast<unsigned>(ceil_div(d, Config<T>::kBD)));
}

}  // namespace vlmkd::cuda::detail
