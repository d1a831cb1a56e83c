// Runs the CUDA top-k epilogue (csrc/cuda/sae_topk.cuh, unchanged) as host threads and checks
// (a) every __syncthreads is reached by all threads of the block at the same line, and
// (b) the running top-k equals an exact sort. Usage: topk_race ROWS COLS K [CHUNKS] [SEED]
// Prints "ok" or what went wrong; exit status 0 only when every row is right.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "block_emu.h"
#include "sae_topk.cuh"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ROWS COLS K [CHUNKS] [SEED]\n", argv[0]);
    return 2;
  }
  const int rows = std::atoi(argv[1]), cols = std::atoi(argv[2]), k = std::atoi(argv[3]);
  const int chunks = argc > 4 ? std::atoi(argv[4]) : 1;
  const unsigned seed = argc > 5 ? static_cast<unsigned>(std::atoi(argv[5])) : 0u;
  const unsigned threads = 256;  // pyinterp/backends/cuda/sae.py _THREADS
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  std::vector<i64> state(static_cast<size_t>(rows) * k, MIN_KEY);
  std::vector<std::vector<i64>> all(rows);
  for (int c = 0; c < chunks; ++c) {
    std::vector<float> pre(static_cast<size_t>(rows) * cols);
    for (auto& v : pre) v = normal(gen);
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < cols; ++j) all[r].push_back(pack_key(pre[r * cols + j], c * cols + j));
      emu::run_block(static_cast<unsigned>(r), threads, [&] {
        topk_chunk(pre.data(), cols, cols, static_cast<i64>(c) * cols, k, state.data());
      });
      if (emu::barrier().diverged || emu::barrier().hung) {
        std::printf("%s: row %d chunk %d (k=%d): threads of one block waited at different "
                    "__syncthreads\n", emu::barrier().hung ? "HUNG" : "DIVERGED", r, c, k);
        return 1;
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    std::vector<i64>& keys = all[r];
    std::sort(keys.begin(), keys.end(), [](i64 a, i64 b) { return a > b; });
    for (int j = 0; j < k; ++j) {
      const i64 want = j < static_cast<int>(keys.size()) ? keys[j] : MIN_KEY;
      if (state[static_cast<size_t>(r) * k + j] != want) {
        std::printf("WRONG: row %d slot %d\n", r, j);
        return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
