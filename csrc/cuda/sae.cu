// Sparse SAE kernels (CUDA C++, compiled at run time by NVRTC through CuPy). Same interface as
// csrc/cpu/sae.cpp and triton_kernels/sae.py; see docs/decisions/sae-topk-ties.md and
// sae-deterministic-scatter.md.
//
// sae_topk_chunk_<t>: the top-k epilogue (sae_topk.cuh): torch (cuBLAS) produces a float32
//   chunk of pre-activations (rows x cols, leading dim ld); one block per row folds it into
//   the row's running top-k of packed (value, column) keys. k <= KMAX.
// sae_topk_unpack_<t>: keys -> ReLU(value) in the output dtype and int64 column.
// sae_gather_<t>:      out[n] = bias + sum_j coef[n, j] W[idx[n, j], :] (W by strides), out
//                      in W's dtype; sae_gather_acc_<t> the same with a float32 (float64) out.
// sae_gather_dot_<t>:  out[n, j] = dot(g[n], W[idx[n, j], :]), one warp per (n, j).
// sae_scatter_atomic_<acc>: out[idx[e], :] += coef[e] x[row(e), :] with float atomics.
// sae_scatter_segment_<t>: deterministic: latent l sums its entries (sorted by latent,
//   stable) in order; one block per (latent, 256 columns); writes every row (zeros if empty).
//
// fp16/bf16 are read as raw 16-bit words and converted in registers (no headers under NVRTC);
// accumulation in float (double for float64).

#include "common.cuh"  // i64, f16_t / bf16_t, Acc, ld_acc, st
#include "sae_topk.cuh"

template <typename T>
__device__ void topk_unpack(const i64* __restrict__ state, i64 rows, int k, T* __restrict__ vals,
                            i64* __restrict__ idx) {
  i64 e = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= rows * k) return;
  float v;
  i64 col;
  unpack_key(state[e], &v, &col);
  st(vals + e, static_cast<typename Acc<T>::type>(v > 0.0f || v != v ? v : 0.0f));  // ReLU
  idx[e] = col;
}

// O: the output type, T (sparse_decode) or Acc<T>::type (the encoder's grad x, float32 for
// 16-bit weights).
template <typename T, typename O>
__device__ void gather(const typename Acc<T>::type* __restrict__ coef, const i64* __restrict__ idx,
                       const T* __restrict__ W, i64 sl, i64 sd, const T* __restrict__ bias,
                       O* __restrict__ out, int k, int d) {
  typedef typename Acc<T>::type A;
  const i64 n = blockIdx.x;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= d) return;
  A acc = bias ? ld_acc(bias + i) : A(0);
  for (int j = 0; j < k; ++j) {
    const A c = coef[n * k + j];
    if (c != A(0)) acc += c * ld_acc(W + idx[n * k + j] * sl + static_cast<i64>(i) * sd);
  }
  st(out + n * d + i, acc);
}

template <typename T>
__device__ void gather_dot(const typename Acc<T>::type* __restrict__ g, const i64* __restrict__ idx,
                           const T* __restrict__ W, i64 sl, i64 sd,
                           typename Acc<T>::type* __restrict__ out, i64 nnz, int k, int d) {
  typedef typename Acc<T>::type A;
  const i64 e = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (e >= nnz) return;
  const i64 n = e / k;
  const T* w = W + idx[e] * sl;
  A s = 0;
  for (int i = lane; i < d; i += 32) s += g[n * d + i] * ld_acc(w + static_cast<i64>(i) * sd);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[e] = s;
}

template <typename A>
__device__ void scatter_atomic(const A* __restrict__ coef, const i64* __restrict__ idx,
                               const A* __restrict__ x, A* __restrict__ out, i64 sl, i64 sd,
                               A* __restrict__ colsum, int k, int d) {
  const i64 n = blockIdx.x;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  const A xv = i < d ? x[n * d + i] : A(0);
  for (int j = 0; j < k; ++j) {
    const A c = coef[n * k + j];
    const i64 l = idx[n * k + j];
    if (i < d) atomicAdd(out + l * sl + static_cast<i64>(i) * sd, c * xv);
    if (colsum && blockIdx.y == 0 && threadIdx.x == 0) atomicAdd(colsum + l, c);
  }
}

template <typename T>
__device__ void scatter_segment(const typename Acc<T>::type* __restrict__ coef,
                                const i64* __restrict__ order, const i64* __restrict__ offsets,
                                const typename Acc<T>::type* __restrict__ x, T* __restrict__ out,
                                i64 sl, i64 sd, typename Acc<T>::type* __restrict__ colsum, int k,
                                int d) {
  typedef typename Acc<T>::type A;
  const i64 l = blockIdx.x;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  const i64 start = offsets[l], end = offsets[l + 1];
  A acc = 0, cs = 0;
  for (i64 p = start; p < end; ++p) {
    const i64 e = order[p];
    const A c = coef[e];
    cs += c;
    if (i < d) acc += c * x[(e / k) * d + i];
  }
  if (i < d) st(out + l * sl + static_cast<i64>(i) * sd, acc);
  if (colsum && blockIdx.y == 0 && threadIdx.x == 0) colsum[l] = cs;
}

extern "C" {

__global__ void sae_topk_chunk_f32(const float* pre, i64 ld, i64 cols, i64 col0, int k,
                                   i64* state) {
  topk_chunk(pre, ld, cols, col0, k, state);
}

#define SAE_TYPED(SUF, T)                                                                        \
  __global__ void sae_topk_unpack_##SUF(const i64* state, i64 rows, int k, T* vals, i64* idx) {   \
    topk_unpack<T>(state, rows, k, vals, idx);                                                   \
  }                                                                                              \
  __global__ void sae_gather_##SUF(const Acc<T>::type* coef, const i64* idx, const T* W, i64 sl,  \
                                   i64 sd, const T* bias, T* out, int k, int d) {                 \
    gather<T, T>(coef, idx, W, sl, sd, bias, out, k, d);                                         \
  }                                                                                              \
  __global__ void sae_gather_acc_##SUF(const Acc<T>::type* coef, const i64* idx, const T* W,      \
                                       i64 sl, i64 sd, const T* bias, Acc<T>::type* out, int k,   \
                                       int d) {                                                   \
    gather<T, Acc<T>::type>(coef, idx, W, sl, sd, bias, out, k, d);                              \
  }                                                                                              \
  __global__ void sae_gather_dot_##SUF(const Acc<T>::type* g, const i64* idx, const T* W, i64 sl, \
                                       i64 sd, Acc<T>::type* out, i64 nnz, int k, int d) {        \
    gather_dot<T>(g, idx, W, sl, sd, out, nnz, k, d);                                            \
  }                                                                                              \
  __global__ void sae_scatter_segment_##SUF(const Acc<T>::type* coef, const i64* order,           \
                                            const i64* offsets, const Acc<T>::type* x, T* out,    \
                                            i64 sl, i64 sd, Acc<T>::type* colsum, int k, int d) { \
    scatter_segment<T>(coef, order, offsets, x, out, sl, sd, colsum, k, d);                      \
  }

SAE_TYPED(f32, float)
SAE_TYPED(f16, f16_t)
SAE_TYPED(bf16, bf16_t)
SAE_TYPED(f64, double)

__global__ void sae_scatter_atomic_f32(const float* coef, const i64* idx, const float* x,
                                       float* out, i64 sl, i64 sd, float* colsum, int k, int d) {
  scatter_atomic<float>(coef, idx, x, out, sl, sd, colsum, k, d);
}
__global__ void sae_scatter_atomic_f64(const double* coef, const i64* idx, const double* x,
                                       double* out, i64 sl, i64 sd, double* colsum, int k, int d) {
  scatter_atomic<double>(coef, idx, x, out, sl, sd, colsum, k, d);
}

}  // extern "C"
