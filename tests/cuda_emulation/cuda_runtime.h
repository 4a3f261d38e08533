// Host-side stand-in for <cuda_runtime.h> that runs the device code of csrc/cuda on the CPU, for tests only.
//
// A launch runs its blocks one after another; the threads of a block are fibers (ucontext) on one OS thread,
// each running until it reaches __syncthreads() or a warp shuffle, where it yields to the next. Running every
// thread up to each barrier before any passes it is the most adversarial schedule for a missing barrier
// (a read of shared memory before the writes it needs, or a write over data not yet read shows up as a wrong
// result), and every unfinished thread must reach the same barrier (checked). __shared__ variables are
// function statics, shared by the fibers of the block and reused by the next block.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t { cudaSuccess = 0 };
using cudaStream_t = void*;

namespace emu {

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 thread;
  long barriers = 0;
  bool done = false;
};

inline dim3 current_thread, current_block, current_block_dim;
inline ucontext_t scheduler;
inline Fiber* current = nullptr;
inline const std::function<void()>* body = nullptr;
inline std::vector<double> lanes;  // one exchange slot per thread of the block
inline std::exception_ptr failure;  // an exception thrown inside a fiber, rethrown by the scheduler

inline void yield() {
  ++current->barriers;
  swapcontext(&current->context, &scheduler);
}

inline void fiber_main() {
  try {
    (*body)();
  } catch (...) {  // exceptions must not unwind past the fiber's first frame
    failure = std::current_exception();
  }
  current->done = true;  // returning resumes `scheduler` through uc_link
}

// Runs `kernel` (a call of the kernel with its arguments) for every thread of grid x block (1-D blocks).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  constexpr size_t kStack = 1 << 17;
  const unsigned threads = block.x;
  body = &kernel;
  current_block_dim = block;
  lanes.assign(threads, 0.0);
  std::vector<Fiber> fibers(threads);
  for (auto& fiber : fibers) fiber.stack = std::make_unique<char[]>(kStack);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        current_block = dim3(bx, by, bz);
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& fiber = fibers[t];
          fiber.thread = dim3(t);
          fiber.barriers = 0;
          fiber.done = false;
          getcontext(&fiber.context);
          fiber.context.uc_stack.ss_sp = fiber.stack.get();
          fiber.context.uc_stack.ss_size = kStack;
          fiber.context.uc_link = &scheduler;
          makecontext(&fiber.context, fiber_main, 0);
        }
        for (bool running = true; running;) {
          running = false;
          long barrier = -1;
          for (auto& fiber : fibers) {
            if (fiber.done) continue;
            current = &fiber;
            current_thread = fiber.thread;
            swapcontext(&scheduler, &fiber.context);
            if (failure) std::rethrow_exception(std::exchange(failure, nullptr));
            if (fiber.done) continue;
            running = true;
            if (barrier >= 0 && fiber.barriers != barrier)
              throw std::logic_error("threads of a block wait at different barriers");
            barrier = fiber.barriers;
          }
        }
      }
}

}  // namespace emu

#define threadIdx (::emu::current_thread)
#define blockIdx (::emu::current_block)
#define blockDim (::emu::current_block_dim)

inline void __syncthreads() { emu::yield(); }
inline void __syncwarp() { emu::yield(); }  // as a block-wide barrier: the kernels call it uniformly

// Every unfinished thread takes part (true of the kernels under test, whose shuffles are uniform).
template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
  const unsigned t = threadIdx.x;
  const unsigned partner = (t & ~31u) | ((t % 32) ^ static_cast<unsigned>(lane_mask));
  (void)width;  // lane_mask < width keeps the partner inside the segment
  emu::lanes[t] = static_cast<double>(value);
  emu::yield();
  const double received = emu::lanes[partner];
  emu::yield();
  return static_cast<T>(received);
}
