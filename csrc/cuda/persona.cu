// Persona-vector projection kernels (CUDA C++, compiled at run time by NVRTC through CuPy).
// Same interface as csrc/cpu/persona.cpp and triton_kernels/persona.py; see
// docs/decisions/persona-projection.md.
//
// Hidden states are L per-layer (B, T, D) views given by a device table of data pointers and a
// table of L x 3 element strides: read in place, never copied. Accumulation in float (double for
// float64); outputs are in the accumulation type. fp16/bf16 are read as raw 16-bit words and
// converted in registers, so no fp16/bf16 headers are needed under NVRTC.
//
// persona_pool_<t>:   out[s, l, b, :] = sum_{t in split s} w[b, t] h[l, b, t, :]; one block per
//                     (layer x row, 256 columns, token split); consecutive threads read
//                     consecutive columns (coalesced); a zero-weight token is skipped by the
//                     whole block (the weight is uniform across the block: no divergence).
// persona_gather_<t>: out[l, b, :] = h[l, b, index[b], :]; NaN where index[b] < 0.
// persona_tokens_<t>: out[l, b, t, p] = h[l, b, t, :] . w[l, p, :]; one warp per token, up to
//                     8 directions per sweep over D, warp-shuffle reductions.

#include "common.cuh"  // i64, f16_t / bf16_t, Acc, ld_acc

__device__ __forceinline__ float nan_of(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double nan_of(double) { return __longlong_as_double(0x7ff8000000000000LL); }

template <typename T>
__device__ __forceinline__ const T* layer_base(const i64* table, i64 l) {
  return reinterpret_cast<const T*>(table[l]);
}

template <typename T>
__device__ void pool(const i64* __restrict__ table, const i64* __restrict__ strides,
                     const typename Acc<T>::type* __restrict__ weights,
                     typename Acc<T>::type* __restrict__ out, int L, int B, int T_, int D,
                     int per_split) {
  typedef typename Acc<T>::type A;
  const i64 lb = blockIdx.x;
  const i64 l = lb / B, b = lb % B;
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  const int split = blockIdx.z;
  const i64 sb = strides[3 * l], st = strides[3 * l + 1], sd = strides[3 * l + 2];
  const T* row = layer_base<T>(table, l) + b * sb + static_cast<i64>(d) * sd;
  const A* w = weights + b * T_;
  const int t0 = split * per_split;
  const int t1 = min(T_, t0 + per_split);
  A acc = 0;
  if (d < D) {
#pragma unroll 4
    for (int t = t0; t < t1; ++t) {
      const A wt = w[t];
      if (wt != A(0)) acc += wt * ld_acc(row + static_cast<i64>(t) * st);  // NaN weights kept
    }
    out[((static_cast<i64>(split) * L + l) * B + b) * D + d] = acc;
  }
}

template <typename T>
__device__ void gather(const i64* __restrict__ table, const i64* __restrict__ strides,
                       const i64* __restrict__ index, typename Acc<T>::type* __restrict__ out,
                       int B, int D) {
  typedef typename Acc<T>::type A;
  const i64 lb = blockIdx.x;
  const i64 l = lb / B, b = lb % B;
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const i64 t = index[b];
  A v;
  if (t < 0) {
    v = nan_of(A(0));  // the row selects no token
  } else {
    const i64* s = strides + 3 * l;
    v = ld_acc(layer_base<T>(table, l) + b * s[0] + t * s[1] + static_cast<i64>(d) * s[2]);
  }
  out[lb * D + d] = v;
}

template <typename T>
__device__ void tokens(const i64* __restrict__ table, const i64* __restrict__ strides,
                       const typename Acc<T>::type* __restrict__ wv, i64 w_lstride,
                       typename Acc<T>::type* __restrict__ out, int B, int T_, int D, int P) {
  typedef typename Acc<T>::type A;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const i64 lb = blockIdx.x;
  const i64 l = lb / B, b = lb % B;
  const i64 t = static_cast<i64>(blockIdx.y) * (blockDim.x >> 5) + warp;
  if (t >= T_) return;
  const i64* s = strides + 3 * l;
  const T* row = layer_base<T>(table, l) + b * s[0] + t * s[1];
  const i64 sd = s[2];
  const A* w = wv + l * w_lstride;
  A* dst = out + (lb * T_ + t) * P;
  for (int p0 = 0; p0 < P; p0 += 8) {
    A acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = 0;
    for (int d = lane; d < D; d += 32) {
      const A x = ld_acc(row + static_cast<i64>(d) * sd);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (p0 + j < P) acc[j] += x * w[static_cast<i64>(p0 + j) * D + d];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      A v = acc[j];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == j && p0 + j < P) dst[p0 + j] = v;
    }
  }
}

#define PERSONA_KERNELS(SUFFIX, T)                                                                 \
  extern "C" __global__ void persona_pool_##SUFFIX(const i64* table, const i64* strides,         \
                                                   const Acc<T>::type* weights,                  \
                                                   Acc<T>::type* out, int L, int B, int T_,      \
                                                   int D, int per_split) {                       \
    pool<T>(table, strides, weights, out, L, B, T_, D, per_split);                               \
  }                                                                                              \
  extern "C" __global__ void persona_gather_##SUFFIX(const i64* table, const i64* strides,       \
                                                     const i64* index, Acc<T>::type* out, int B, \
                                                     int D) {                                    \
    gather<T>(table, strides, index, out, B, D);                                                 \
  }                                                                                              \
  extern "C" __global__ void persona_tokens_##SUFFIX(const i64* table, const i64* strides,       \
                                                     const Acc<T>::type* w, i64 w_lstride,       \
                                                     Acc<T>::type* out, int B, int T_, int D,    \
                                                     int P) {                                    \
    tokens<T>(table, strides, w, w_lstride, out, B, T_, D, P);                                   \
  }

PERSONA_KERNELS(f32, float)
PERSONA_KERNELS(f16, f16_t)
PERSONA_KERNELS(bf16, bf16_t)
PERSONA_KERNELS(f64, double)
