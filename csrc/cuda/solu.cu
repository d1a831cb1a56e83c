// SoLU CUDA kernels: solu(x) = x * softmax(x) and the fused solu_ln(x) = LayerNorm(solu(x)),
// forward and backward, over the rows of a contiguous (rows, d) tensor.
//
// Compiled at run time by NVRTC (pyinterp/backends/cuda/runtime.py) and compile-checked with
// nvcc in the tests; no CUDA headers are included so that NVRTC needs no include path.
// Kernels are extern "C", one per dtype: <name>_<f32|f16|bf16|f64>.
//
// Forward: one block per row (a block of one warp for short rows). The first sweep reads the
// row from global memory (16-byte vector loads when aligned) and, when it fits, keeps it in
// dynamic shared memory in the accumulation type, so later sweeps (sum of exp, variance,
// output) do not touch DRAM. Saved: lse (solu) or (lse, mean, rstd) (solu_ln) per row.
// Backward: a persistent grid of blocks, each looping over rows; weight/bias gradients go to
// the block's own row of a (gridDim, d) partial buffer (summed by torch): no atomics.

typedef unsigned short u16;

struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(f16_t v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}
__device__ __forceinline__ float to_acc(bf16_t v) {
  return __int_as_float(static_cast<int>(static_cast<unsigned>(v.bits) << 16));
}

__device__ __forceinline__ void from_acc(float* dst, float v) { *dst = v; }
__device__ __forceinline__ void from_acc(double* dst, double v) { *dst = v; }
__device__ __forceinline__ void from_acc(f16_t* dst, float v) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  dst->bits = h;
}
__device__ __forceinline__ void from_acc(bf16_t* dst, float v) {
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
  dst->bits = h;
}

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float log_acc(float v) { return logf(v); }
__device__ __forceinline__ double log_acc(double v) { return log(v); }
__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(0xfff0000000000000ULL);
}

// NaN-propagating max, so a NaN anywhere makes the row NaN as in torch.
template <typename A> __device__ __forceinline__ A nan_max(A a, A b) {
  return (a != a || a > b) ? a : b;
}

// ---------------------------------------------------------------------------------------
// block reductions (any blockDim.x that is a multiple of 32, up to 1024)

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sums N values across the block; every thread gets the totals.
template <typename A, int N> __device__ __forceinline__ void block_sum(A (&v)[N]) {
  __shared__ A red[N][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = warp_sum(v[k]);
  if (nwarps == 1) return;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) red[k][warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    A t = lane < nwarps ? red[k][lane] : A(0);
    v[k] = warp_sum(t);
  }
}

template <typename A> __device__ __forceinline__ A block_max(A v) {
  __shared__ A red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  if (nwarps == 1) return v;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A t = lane < nwarps ? red[lane] : neg_inf<A>();
  return warp_max(t);
}

// ---------------------------------------------------------------------------------------
// row access

// Elements per 16-byte vector.
template <typename T> struct Vec { enum { n = 16 / sizeof(T) }; };

// Load row x[0:d) into the accumulation type; calls f(i, value) for every element.
// vec: the row start is 16-byte aligned and d is a multiple of Vec<T>::n.
template <typename T, typename F>
__device__ __forceinline__ void for_row(const T* __restrict__ x, int d, bool vec, F f) {
  if (vec) {
    const int n = Vec<T>::n;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    for (int j = threadIdx.x; j < d / n; j += blockDim.x) {
      uint4 raw = xv[j];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < n; ++k) f(j * n + k, to_acc(e[k]));
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) f(i, to_acc(x[i]));
  }
}

// Sweep over a row already seen once: from shared memory when cached, else from global.
template <typename T, typename A, typename F>
__device__ __forceinline__ void for_again(const T* __restrict__ x, const A* cache, int d,
                                          bool vec, F f) {
  if (cache) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) f(i, cache[i]);
  } else {
    for_row(x, d, vec, f);
  }
}

// First sweep over row xr: its (NaN-propagating) max, and the row kept in cache when given.
template <typename T, typename A>
__device__ __forceinline__ A row_max_caching(const T* __restrict__ xr, A* cache, int d, bool vec) {
  A m = neg_inf<A>();
  for_row(xr, d, vec, [&](int i, A v) {
    if (cache) cache[i] = v;
    m = nan_max(m, v);
  });
  m = block_max(m);
  __syncthreads();  // cache writes (vector mapping) before reads (scalar mapping)
  return m;
}

// ---------------------------------------------------------------------------------------
// solu

template <typename T>
__device__ void solu_fwd(const T* __restrict__ x, T* __restrict__ y,
                         typename Acc<T>::type* __restrict__ lse, long long rows, int d,
                         int cached, int vec) {
  typedef typename Acc<T>::type A;
  extern __shared__ unsigned char smem_raw[];
  A* cache = cached ? reinterpret_cast<A*>(smem_raw) : nullptr;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    const A m = row_max_caching(xr, cache, d, vec);
    A s[1] = {A(0)};
    for_again(xr, cache, d, vec, [&](int i, A v) { s[0] += exp_acc(v - m); });
    block_sum(s);
    const A l = m + log_acc(s[0]);
    if (threadIdx.x == 0) lse[r] = l;
    for_again(xr, cache, d, vec, [&](int i, A v) { from_acc(yr + i, v * exp_acc(v - l)); });
    __syncthreads();  // the cache is rewritten by the next row
  }
}

// gx = p * (g * (1 + x) - S),  S = sum(g * x * p),  p = exp(x - lse)
template <typename T>
__device__ void solu_bwd(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ lse,
                         const T* __restrict__ gy, T* __restrict__ gx, long long rows, int d) {
  typedef typename Acc<T>::type A;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    const T* gr = gy + r * d;
    T* o = gx + r * d;
    const A l = lse[r];
    A S[1] = {A(0)};
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      A xv = to_acc(xr[i]);
      S[0] += to_acc(gr[i]) * xv * exp_acc(xv - l);
    }
    block_sum(S);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      A xv = to_acc(xr[i]);
      A p = exp_acc(xv - l);
      from_acc(o + i, p * (to_acc(gr[i]) * (A(1) + xv) - S[0]));
    }
  }
}

// ---------------------------------------------------------------------------------------
// solu_ln. stats[r] = (lse, mean, rstd).

template <typename T>
__device__ void solu_ln_fwd(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ w,
                            const typename Acc<T>::type* __restrict__ b, T* __restrict__ y,
                            T* __restrict__ pre, typename Acc<T>::type* __restrict__ stats,
                            long long rows, int d, float eps, int cached, int vec) {
  typedef typename Acc<T>::type A;
  extern __shared__ unsigned char smem_raw[];
  A* cache = cached ? reinterpret_cast<A*>(smem_raw) : nullptr;
  const A inv_d = A(1) / A(d);
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    const A m = row_max_caching(xr, cache, d, vec);
    // sum exp(x - m) and sum x exp(x - m): the softmax normaliser and (scaled) mean of h
    A s2[2] = {A(0), A(0)};
    for_again(xr, cache, d, vec, [&](int i, A v) {
      A e = exp_acc(v - m);
      s2[0] += e;
      s2[1] += v * e;
    });
    block_sum(s2);
    const A inv = A(1) / s2[0];
    const A mean = s2[1] * inv * inv_d;
    A sv[1] = {A(0)};  // variance about the mean (two-pass: no cancellation)
    for_again(xr, cache, d, vec, [&](int i, A v) {
      A c = v * exp_acc(v - m) * inv - mean;
      sv[0] += c * c;
    });
    block_sum(sv);
    const A rstd = rsqrt_acc(sv[0] * inv_d + A(eps));
    if (threadIdx.x == 0) {
      stats[3 * r] = m + log_acc(s2[0]);
      stats[3 * r + 1] = mean;
      stats[3 * r + 2] = rstd;
    }
    T* pr = pre ? pre + r * d : nullptr;
    for_again(xr, cache, d, vec, [&](int i, A v) {
      A h = v * exp_acc(v - m) * inv;
      A o = (h - mean) * rstd;
      if (w) o *= w[i];
      if (b) o += b[i];
      from_acc(yr + i, o);
      if (pr) from_acc(pr + i, h);
    });
    __syncthreads();
  }
}

// Backward of y = LN(h) w + b with h = SoLU(x), plus an extra gradient gpre on h:
//   xhat = (h - mean) rstd, g^ = gy w, a = mean(g^), c = mean(g^ xhat)
//   g_h = rstd (g^ - a - xhat c) + gpre,  gx = p (g_h (1 + x) - S),  S = sum(g_h h)
// S comes in closed form from the first sweep's sums. pw/pb: (gridDim.x, d) partials.
template <typename T>
__device__ void solu_ln_bwd(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ w,
                            const typename Acc<T>::type* __restrict__ stats,
                            const T* __restrict__ gy, const T* __restrict__ gpre,
                            T* __restrict__ gx, typename Acc<T>::type* __restrict__ pw,
                            typename Acc<T>::type* __restrict__ pb, long long rows, int d) {
  typedef typename Acc<T>::type A;
  const A inv_d = A(1) / A(d);
  A* pwr = pw + static_cast<long long>(blockIdx.x) * d;
  A* pbr = pb + static_cast<long long>(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    pwr[i] = A(0);
    pbr[i] = A(0);
  }
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    const T* gr = gy + r * d;
    const T* qr = gpre ? gpre + r * d : nullptr;
    T* o = gx + r * d;
    const A l = stats[3 * r], mean = stats[3 * r + 1], rstd = stats[3 * r + 2];
    A s[5] = {A(0), A(0), A(0), A(0), A(0)};  // sum g^, g^ xhat, xhat, xhat^2, gpre h
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      A xv = to_acc(xr[i]);
      A p = exp_acc(xv - l);
      A h = xv * p;
      A xh = (h - mean) * rstd;
      A g = to_acc(gr[i]);
      A gh = w ? g * w[i] : g;
      s[0] += gh;
      s[1] += gh * xh;
      s[2] += xh;
      s[3] += xh * xh;
      if (qr) s[4] += to_acc(qr[i]) * h;
      pwr[i] += g * xh;  // each column i is owned by one thread of this block
      pbr[i] += g;
    }
    block_sum(s);
    const A a = s[0] * inv_d, c = s[1] * inv_d;
    const A S = s[1] - a * s[2] - c * s[3] - rstd * mean * c * s[2] + s[4];
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      A xv = to_acc(xr[i]);
      A p = exp_acc(xv - l);
      A xh = (xv * p - mean) * rstd;
      A g = to_acc(gr[i]);
      A gh = rstd * ((w ? g * w[i] : g) - a - xh * c);
      if (qr) gh += to_acc(qr[i]);
      from_acc(o + i, p * (gh * (A(1) + xv) - S));
    }
  }
}

// ---------------------------------------------------------------------------------------
// extern "C" entry points, one per dtype

#define PYINTERP_SOLU_KERNELS(SFX, T)                                                          \
  extern "C" __global__ void solu_fwd_##SFX(const T* x, T* y, Acc<T>::type* lse,              \
                                            long long rows, int d, int cached, int vec) {     \
    solu_fwd<T>(x, y, lse, rows, d, cached, vec);                                             \
  }                                                                                            \
  extern "C" __global__ void solu_bwd_##SFX(const T* x, const Acc<T>::type* lse, const T* gy, \
                                            T* gx, long long rows, int d) {                   \
    solu_bwd<T>(x, lse, gy, gx, rows, d);                                                     \
  }                                                                                            \
  extern "C" __global__ void solu_ln_fwd_##SFX(                                               \
      const T* x, const Acc<T>::type* w, const Acc<T>::type* b, T* y, T* pre,                 \
      Acc<T>::type* stats, long long rows, int d, float eps, int cached, int vec) {           \
    solu_ln_fwd<T>(x, w, b, y, pre, stats, rows, d, eps, cached, vec);                        \
  }                                                                                            \
  extern "C" __global__ void solu_ln_bwd_##SFX(                                               \
      const T* x, const Acc<T>::type* w, const Acc<T>::type* stats, const T* gy,              \
      const T* gpre, T* gx, Acc<T>::type* pw, Acc<T>::type* pb, long long rows, int d) {      \
    solu_ln_bwd<T>(x, w, stats, gy, gpre, gx, pw, pb, rows, d);                               \
  }

PYINTERP_SOLU_KERNELS(f32, float)
PYINTERP_SOLU_KERNELS(f16, f16_t)
PYINTERP_SOLU_KERNELS(bf16, bf16_t)
PYINTERP_SOLU_KERNELS(f64, double)
