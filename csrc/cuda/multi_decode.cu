// Multi-output sparse decode kernels (CUDA C++, compiled at run time by NVRTC through CuPy).
// Same interface as csrc/cpu/multi_decode.cpp and triton_kernels/multi_decode.py; the contract
// is in pyinterp/ops/multi_decode/function.py. An entry (latent i, coefficient c) reaches
// output g when p = dmap[(i / d_src) * G + g] >= 0 and lo[g] <= i < hi[g]; it then reads
// decoder row W[p, i % d_src, :]. Entries that do not reach g contribute nothing.
//
// md_gather_<t>:        out[g, n, t] = bias[g, t] + sum_j c W[p, r, t]; one thread per
//                       (n, g, feature); the block's threads read a decoder row together.
// md_gather_dot_<t>:    grad values: one warp per entry, summing over the outputs it reaches.
// md_scatter_atomic_<a>: grad W with float atomics; one block per (row, 256 features).
// md_scatter_segment_<a>: grad W without atomics: one block per (latent, 256 features) sums
//                       the latent's entries (grouped by latent, stable) output by output
//                       into its own rows (read-modify-write: a decoder row has one latent).
#include "common.cuh"

__device__ __forceinline__ i64 md_reach(i64 lat, int g, const i64* dmap, const i64* lo,
                                        const i64* hi, int G, i64 d_src, i64 n_src) {
  if (lat < lo[g] || lat >= hi[g]) return -1;
  const i64 s = lat / d_src;
  if (s < 0 || s >= n_src) return -1;
  return dmap[s * G + g];
}

template <typename T>
__device__ void md_gather(const typename Acc<T>::type* __restrict__ coef, const i64* __restrict__ idx,
                          const T* __restrict__ W, const T* __restrict__ bias, T* __restrict__ out,
                          const i64* dmap, const i64* lo, const i64* hi, i64 N, int k, int d, int G,
                          i64 d_src, i64 n_src) {
  typedef typename Acc<T>::type A;
  const i64 n = blockIdx.x;
  const int g = blockIdx.y;
  const int t = blockIdx.z * blockDim.x + threadIdx.x;
  if (t >= d) return;
  A acc = bias ? ld_acc(bias + static_cast<i64>(g) * d + t) : A(0);
  for (int j = 0; j < k; ++j) {
    const i64 lat = idx[n * k + j];
    const i64 p = md_reach(lat, g, dmap, lo, hi, G, d_src, n_src);
    if (p < 0) continue;
    acc += coef[n * k + j] * ld_acc(W + (p * d_src + lat % d_src) * d + t);
  }
  st(out + (static_cast<i64>(g) * N + n) * d + t, acc);
}

template <typename T>
__device__ void md_gather_dot(const typename Acc<T>::type* __restrict__ gout,
                              const i64* __restrict__ idx, const T* __restrict__ W,
                              typename Acc<T>::type* __restrict__ out, const i64* dmap,
                              const i64* lo, const i64* hi, i64 N, int k, int d, int G, i64 d_src,
                              i64 n_src) {
  typedef typename Acc<T>::type A;
  const i64 e = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (e >= N * k) return;
  const i64 n = e / k;
  const i64 lat = idx[e];
  A s = 0;
  for (int g = 0; g < G; ++g) {
    const i64 p = md_reach(lat, g, dmap, lo, hi, G, d_src, n_src);
    if (p < 0) continue;
    const T* w = W + (p * d_src + lat % d_src) * d;
    const A* gr = gout + (static_cast<i64>(g) * N + n) * d;
    for (int t = lane; t < d; t += 32) s += gr[t] * ld_acc(w + t);
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[e] = s;
}

template <typename A>
__device__ void md_scatter_atomic(const A* __restrict__ coef, const i64* __restrict__ idx,
                                  const A* __restrict__ x, A* __restrict__ out, const i64* dmap,
                                  const i64* lo, const i64* hi, i64 N, int k, int d, int G,
                                  i64 d_src, i64 n_src) {
  const i64 n = blockIdx.x;
  const int t = blockIdx.y * blockDim.x + threadIdx.x;
  if (t >= d) return;
  for (int j = 0; j < k; ++j) {
    const i64 lat = idx[n * k + j];
    const A c = coef[n * k + j];
    for (int g = 0; g < G; ++g) {
      const i64 p = md_reach(lat, g, dmap, lo, hi, G, d_src, n_src);
      if (p < 0) continue;
      atomicAdd(out + (p * d_src + lat % d_src) * d + t,
                c * x[(static_cast<i64>(g) * N + n) * d + t]);
    }
  }
}

template <typename A>
__device__ void md_scatter_segment(const A* __restrict__ coef, const i64* __restrict__ order,
                                   const i64* __restrict__ offsets, const A* __restrict__ x,
                                   A* __restrict__ out, const i64* dmap, const i64* lo,
                                   const i64* hi, i64 N, int k, int d, int G, i64 d_src,
                                   i64 n_src) {
  const i64 lat = blockIdx.x;
  const int t = blockIdx.y * blockDim.x + threadIdx.x;
  if (t >= d) return;
  const i64 start = offsets[lat], end = offsets[lat + 1];
  if (start == end) return;
  for (int g = 0; g < G; ++g) {
    const i64 p = md_reach(lat, g, dmap, lo, hi, G, d_src, n_src);
    if (p < 0) continue;
    A* o = out + (p * d_src + lat % d_src) * d + t;
    A acc = *o;
    for (i64 q = start; q < end; ++q) {
      const i64 e = order[q];
      acc += coef[e] * x[(static_cast<i64>(g) * N + e / k) * d + t];
    }
    *o = acc;
  }
}

extern "C" {

#define MD_TYPED(SUF, T)                                                                         \
  __global__ void md_gather_##SUF(const Acc<T>::type* coef, const i64* idx, const T* W,          \
                                  const T* bias, T* out, const i64* dmap, const i64* lo,         \
                                  const i64* hi, i64 N, int k, int d, int G, i64 d_src,          \
                                  i64 n_src) {                                                   \
    md_gather<T>(coef, idx, W, bias, out, dmap, lo, hi, N, k, d, G, d_src, n_src);              \
  }                                                                                              \
  __global__ void md_gather_dot_##SUF(const Acc<T>::type* g, const i64* idx, const T* W,         \
                                      Acc<T>::type* out, const i64* dmap, const i64* lo,         \
                                      const i64* hi, i64 N, int k, int d, int G, i64 d_src,      \
                                      i64 n_src) {                                               \
    md_gather_dot<T>(g, idx, W, out, dmap, lo, hi, N, k, d, G, d_src, n_src);                   \
  }

MD_TYPED(f32, float)
MD_TYPED(f16, f16_t)
MD_TYPED(bf16, bf16_t)
MD_TYPED(f64, double)

#define MD_ACC(SUF, A)                                                                           \
  __global__ void md_scatter_atomic_##SUF(const A* coef, const i64* idx, const A* x, A* out,     \
                                          const i64* dmap, const i64* lo, const i64* hi, i64 N,  \
                                          int k, int d, int G, i64 d_src, i64 n_src) {           \
    md_scatter_atomic<A>(coef, idx, x, out, dmap, lo, hi, N, k, d, G, d_src, n_src);            \
  }                                                                                              \
  __global__ void md_scatter_segment_##SUF(const A* coef, const i64* order, const i64* offsets,  \
                                           const A* x, A* out, const i64* dmap, const i64* lo,   \
                                           const i64* hi, i64 N, int k, int d, int G, i64 d_src, \
                                           i64 n_src) {                                          \
    md_scatter_segment<A>(coef, order, offsets, x, out, dmap, lo, hi, N, k, d, G, d_src, n_src); \
  }

MD_ACC(f32, float)
MD_ACC(f64, double)

}  // extern "C"
