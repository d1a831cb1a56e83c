// Host emulation of one CUDA thread block, for running __device__ code that needs only
// threadIdx/blockIdx/blockDim, __shared__ variables, integer atomicAdd and __syncthreads.
//
// Each CUDA thread is an OS thread; __syncthreads() is a barrier that records the source line
// each thread waits at and flags the block as DIVERGED when two threads of one barrier
// generation wait at different lines (what compute-sanitizer's synccheck reports on a GPU),
// and HUNG when a barrier is not completed within a few seconds (threads stuck at a
// __syncthreads that the others never reach). OS scheduling interleaves the threads far more
// freely than warps run on a GPU, which is what exposes ordering bugs between barriers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

typedef long long i64;

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};

static thread_local EmuDim3 threadIdx;
static EmuDim3 blockIdx;
static EmuDim3 blockDim;

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

inline int __float_as_int(float v) {
  int i;
  std::memcpy(&i, &v, sizeof i);
  return i;
}
inline float __int_as_float(int i) {
  float v;
  std::memcpy(&v, &i, sizeof v);
  return v;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

namespace emu {

struct Barrier {
  std::mutex m;
  std::condition_variable cv;
  int threads = 0, arrived = 0, line = -1;
  long generation = 0;
  bool diverged = false, hung = false;

  void wait(int at_line) {
    std::unique_lock<std::mutex> lock(m);
    if (hung) return;
    if (arrived == 0) {
      line = at_line;
    } else if (line != at_line) {
      diverged = true;
    }
    const long gen = generation;
    if (++arrived == threads) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    if (!cv.wait_for(lock, std::chrono::seconds(5), [&] { return generation != gen; })) {
      hung = true;  // release everyone: the block is broken, the result is reported as such
      cv.notify_all();
    }
  }
};

inline Barrier& barrier() {
  static Barrier b;
  return b;
}

// Runs body() on `threads` OS threads as one block with index `block`.
template <typename F>
void run_block(unsigned block, unsigned threads, F body) {
  Barrier& b = barrier();
  b.threads = static_cast<int>(threads);
  b.arrived = 0;
  blockIdx.x = block;
  blockDim.x = threads;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([t, &body] {
      threadIdx.x = t;
      body();
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace emu

#define __syncthreads() emu::barrier().wait(__LINE__)
