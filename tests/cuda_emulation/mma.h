// Host-side stand-in for <mma.h> (the WMMA API) for the CPU emulator, for tests only.
//
// Real fragments spread a tile over the 32 lanes of a warp in an unspecified layout; here every thread keeps
// the whole tile, so loads, mma and stores have the same meaning (each lane computes and stores the full
// tile, identically). Code that only uses the API and elementwise operations on `x` - as it must, since
// the layout is unspecified - behaves the same. __float_to_tf32 rounds to TF32 (10-bit mantissa) like the
// hardware, so TF32 accuracy is what the tests see; loads and stores check alignment and ldm as the
// hardware requires.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
constexpr int fragment_rows = std::is_same_v<Use, matrix_b> ? K : M;
template <typename Use, int M, int N, int K>
constexpr int fragment_cols = std::is_same_v<Use, matrix_a> ? K : N;

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = fragment_rows<Use, M, N, K>;
  static constexpr int cols = fragment_cols<Use, M, N, K>;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];  // row-major tile
};

inline float __float_to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits = (bits + 0x1000u) & 0xffffe000u;  // round to nearest on the 13 dropped mantissa bits
  std::memcpy(&value, &bits, 4);
  return value;
}

// The hardware's requirements on WMMA memory operands: 256-bit aligned pointer, ldm a multiple of 16 bytes.
inline void check_operand(const float* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) throw std::logic_error("WMMA pointer not 32-byte aligned");
  if (ldm % 4 != 0) throw std::logic_error("WMMA ldm not a multiple of 16 bytes");
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  check_operand(p, ldm);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float value) {
  for (float& element : f.x) element = value;
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b, const fragment<accumulator, M, N, K, float>& c) {
  fragment<accumulator, M, N, K, float> out;
  for (int r = 0; r < M; ++r)
    for (int col = 0; col < N; ++col) {
      float sum = c.x[r * N + col];
      for (int k = 0; k < K; ++k) sum += a.x[r * K + k] * b.x[k * N + col];
      out.x[r * N + col] = sum;
    }
  d = out;
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_operand(p, ldm);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

}  // namespace nvcuda::wmma
