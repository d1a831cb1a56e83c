// Persona-vector projection CPU kernels (docs/decisions/persona-projection.md).
//
// Hidden states arrive as L per-layer (B, T, D) views: a data pointer and three element
// strides per layer, so slices of a model's residual stream are read in place, never copied.
//
// - persona_pool: hbar[l, b, :] = sum_t weights[b, t] * h[l, b, t, :] (masked mean / sum;
//   zero-weight tokens are skipped, not read), or h[l, b, index[b], :] ("last"; NaN where
//   index < 0). One pass over the selected tokens; the P projections are then a tiny matmul
//   on hbar (by linearity of the dot product), done by the caller.
// - persona_tokens: proj[l, b, t, p] = h[l, b, t, :] . w[l, p, :] for every token ("none").
//
// OpenMP over (layer, batch row, token block). Accumulation in float (double for float64);
// inner loops over D are `omp simd` with branch-free fp16/bf16 -> float conversions, so they
// vectorise with -march=native. When L*B is too small to feed every thread, the token range
// is split and per-block partial rows are summed afterwards (fixed order: deterministic).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <omp.h>

#include "common.h"

namespace py = pybind11;

namespace pyinterp {
namespace {

// Threads worth waking for `elements` of work: small calls (a "last"-token gather, a monitor's
// one-token step) run on one thread, avoiding a fork/join barrier that costs more than the work
// (and stalls for a whole time slice when the machine is oversubscribed).
static inline int threads_for(int64_t elements, int requested) {
  const int64_t grain = int64_t(1) << 16;
  const int64_t useful = std::max<int64_t>(1, elements / grain);
  return static_cast<int>(std::min<int64_t>(std::max(1, requested), useful));
}

// Branch-free conversions (vectorisable inside omp simd loops).
#pragma omp declare simd
static inline float cvt(float v) { return v; }
#pragma omp declare simd
static inline double cvt(double v) { return v; }
static inline float cvt(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline float cvt(half_t v) {
  // Shift the exponent/mantissa into float position and rescale by 2^(127-15): exact for
  // normals and subnormals; inf/NaN (exponent 31) are patched with a select.
  uint32_t h = v.bits;
  uint32_t em = h & 0x7fffu;
  uint32_t u = em << 13;
  float f;
  std::memcpy(&f, &u, 4);
  f *= 5.192296858534828e33f;  // 2^112
  uint32_t fu;
  std::memcpy(&fu, &f, 4);
  fu = em >= 0x7c00u ? (u | 0x70000000u) : fu;
  fu |= (h & 0x8000u) << 16;
  std::memcpy(&f, &fu, 4);
  return f;
}

template <typename T>
struct Layers {
  const std::vector<int64_t>& ptrs;
  const std::vector<int64_t>& strides;  // (L, 3): b, t, d in elements
  const T* row(int64_t l, int64_t b, int64_t t) const {
    const int64_t* s = &strides[3 * l];
    return reinterpret_cast<const T*>(ptrs[l]) + b * s[0] + t * s[1];
  }
  int64_t sd(int64_t l) const { return strides[3 * l + 2]; }
};

// dst[d] += sum_k w[k] * rows[k][d], K rows at once so dst is loaded/stored once per K tokens.
template <typename T, int K>
static inline void accumulate(acc_t<T>* __restrict dst, const T* const* rows, const acc_t<T>* w,
                              int64_t D, int64_t sd) {
  using A = acc_t<T>;
  if (sd == 1) {
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      A s = dst[d];
      for (int k = 0; k < K; ++k) s += w[k] * static_cast<A>(cvt(rows[k][d]));
      dst[d] = s;
    }
  } else {
    for (int64_t d = 0; d < D; ++d) {
      A s = dst[d];
      for (int k = 0; k < K; ++k) s += w[k] * static_cast<A>(cvt(rows[k][d * sd]));
      dst[d] = s;
    }
  }
}

// Weighted sum of tokens [t0, t1) of (l, b) into dst (D,), skipping zero weights.
template <typename T>
static void pool_range(const Layers<T>& h, int64_t l, int64_t b, int64_t t0, int64_t t1,
                       int64_t T_, int64_t D, const acc_t<T>* weights, acc_t<T>* dst) {
  using A = acc_t<T>;
  std::fill(dst, dst + D, A(0));
  const int64_t sd = h.sd(l);
  const T* rows[4];
  A w[4];
  int n = 0;
  for (int64_t t = t0; t < t1; ++t) {
    A wt = weights[b * T_ + t];
    if (wt == A(0)) continue;  // unselected token: not read at all (NaN weights are kept)
    rows[n] = h.row(l, b, t);
    w[n] = wt;
    if (++n == 4) {
      accumulate<T, 4>(dst, rows, w, D, sd);
      n = 0;
    }
  }
  for (int k = 0; k < n; ++k) accumulate<T, 1>(dst, rows + k, w + k, D, sd);
}

template <typename T>
void pool_impl(const std::vector<int64_t>& ptrs, const std::vector<int64_t>& strides, int64_t B,
               int64_t T_, int64_t D, const acc_t<T>* weights, const int64_t* index, acc_t<T>* out,
               int nthreads) {
  using A = acc_t<T>;
  const Layers<T> h{ptrs, strides};
  const int64_t L = static_cast<int64_t>(ptrs.size());
  const int64_t LB = L * B;
  if (index != nullptr) {
    const int nt = threads_for(LB * D, nthreads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < LB; ++i) {
      const int64_t l = i / B, b = i % B;
      A* dst = out + i * D;
      const int64_t t = index[b];
      if (t < 0) {
        std::fill(dst, dst + D, std::numeric_limits<A>::quiet_NaN());
        continue;
      }
      const T* src = h.row(l, b, t);
      const int64_t sd = h.sd(l);
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<A>(cvt(src[d * sd]));
    }
    return;
  }
  const int nt = threads_for(LB * T_ * D, nthreads);
  // Split tokens only when there are too few (layer, row) pairs to keep every thread busy.
  int64_t chunks = 1;
  if (LB < 4 * nt) chunks = std::min<int64_t>(T_, (4 * nt + LB - 1) / LB);
  if (chunks == 1) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < LB; ++i)
      pool_range<T>(h, i / B, i % B, 0, T_, T_, D, weights, out + i * D);
    return;
  }
  const int64_t per = (T_ + chunks - 1) / chunks;
  std::vector<A> part(static_cast<size_t>(LB * chunks * D));
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < LB * chunks; ++j) {
      const int64_t i = j / chunks, c = j % chunks;
      const int64_t t0 = std::min(T_, c * per), t1 = std::min(T_, t0 + per);
      pool_range<T>(h, i / B, i % B, t0, t1, T_, D, weights, part.data() + j * D);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < LB; ++i) {
      A* dst = out + i * D;
      const A* src = part.data() + i * chunks * D;
      std::copy(src, src + D, dst);
      for (int64_t c = 1; c < chunks; ++c)
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) dst[d] += src[c * D + d];
    }
  }
}

// Dot products of one token row (already in the accumulation type, contiguous) with P
// directions, four directions per sweep so the row is read from cache once per four.
template <typename A>
static inline void dots(const A* __restrict x, const A* __restrict w, int64_t P, int64_t D,
                        A* __restrict out) {
  int64_t p = 0;
  for (; p + 4 <= P; p += 4) {
    const A *w0 = w + p * D, *w1 = w0 + D, *w2 = w1 + D, *w3 = w2 + D;
    A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t d = 0; d < D; ++d) {
      A v = x[d];
      s0 += v * w0[d];
      s1 += v * w1[d];
      s2 += v * w2[d];
      s3 += v * w3[d];
    }
    out[p] = s0; out[p + 1] = s1; out[p + 2] = s2; out[p + 3] = s3;
  }
  for (; p < P; ++p) {
    const A* wp = w + p * D;
    A s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < D; ++d) s += x[d] * wp[d];
    out[p] = s;
  }
}

template <typename T>
void tokens_impl(const std::vector<int64_t>& ptrs, const std::vector<int64_t>& strides, int64_t B,
                 int64_t T_, int64_t D, const acc_t<T>* w, int64_t w_layer_stride, int64_t P,
                 acc_t<T>* out, int nthreads) {
  using A = acc_t<T>;
  const Layers<T> h{ptrs, strides};
  const int64_t L = static_cast<int64_t>(ptrs.size());
  constexpr int64_t kBlock = 16;  // tokens per work item
  const int64_t blocks = (T_ + kBlock - 1) / kBlock;
  const int nt = threads_for(L * B * T_ * D * std::max<int64_t>(1, P / 4), nthreads);
#pragma omp parallel num_threads(nt)
  {
    std::vector<A> buf(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 4)
    for (int64_t j = 0; j < L * B * blocks; ++j) {
      const int64_t l = j / (B * blocks), b = (j / blocks) % B, blk = j % blocks;
      const int64_t sd = h.sd(l);
      const A* wl = w + l * w_layer_stride;
      for (int64_t t = blk * kBlock; t < std::min(T_, (blk + 1) * kBlock); ++t) {
        const T* src = h.row(l, b, t);
        const A* x;
        if constexpr (std::is_same_v<T, A>) {
          if (sd == 1) {
            x = src;
          } else {
            for (int64_t d = 0; d < D; ++d) buf[d] = src[d * sd];
            x = buf.data();
          }
        } else {
          if (sd == 1) {
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) buf[d] = cvt(src[d]);
          } else {
            for (int64_t d = 0; d < D; ++d) buf[d] = cvt(src[d * sd]);
          }
          x = buf.data();
        }
        dots<A>(x, wl, P, D, out + ((l * B + b) * T_ + t) * P);
      }
    }
  }
}

void check_table(const std::vector<int64_t>& ptrs, const std::vector<int64_t>& strides) {
  if (ptrs.empty() || strides.size() != 3 * ptrs.size())
    throw std::invalid_argument("persona: need L >= 1 layer pointers and 3*L strides");
}

}  // namespace

void register_persona(py::module_& m) {
  m.def(
      "persona_pool",
      [](const std::vector<int64_t>& ptrs, const std::vector<int64_t>& strides, int64_t B,
         int64_t T, int64_t D, uintptr_t weights, uintptr_t index, uintptr_t out, int dtype,
         int num_threads) {
        check_table(ptrs, strides);
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(dtype, S,
            pool_impl<S>(ptrs, strides, B, T, D, as<const acc_t<S>>(weights),
                         as<const int64_t>(index), as<acc_t<S>>(out), num_threads));
      },
      "hbar (L,B,D) = token-weighted sum (weights (B,T)) or gather at index (B,) of L (B,T,D) layers",
      py::arg("ptrs"), py::arg("strides"), py::arg("B"), py::arg("T"), py::arg("D"),
      py::arg("weights"), py::arg("index"), py::arg("out"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "persona_tokens",
      [](const std::vector<int64_t>& ptrs, const std::vector<int64_t>& strides, int64_t B,
         int64_t T, int64_t D, uintptr_t w, int64_t w_layer_stride, int64_t P, uintptr_t out,
         int dtype, int num_threads) {
        check_table(ptrs, strides);
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(dtype, S,
            tokens_impl<S>(ptrs, strides, B, T, D, as<const acc_t<S>>(w), w_layer_stride, P,
                           as<acc_t<S>>(out), num_threads));
      },
      "proj (L,B,T,P) = per-token dot products of L (B,T,D) layers with w (L,P,D)",
      py::arg("ptrs"), py::arg("strides"), py::arg("B"), py::arg("T"), py::arg("D"), py::arg("w"),
      py::arg("w_layer_stride"), py::arg("P"), py::arg("out"), py::arg("dtype"),
      py::arg("num_threads"));
}

}  // namespace pyinterp
