// SoLU CPU kernels: solu(x) = x * softmax(x) and the fused solu_ln(x) = LayerNorm(solu(x)),
// forward and backward, over rows of a contiguous (rows, d) tensor.
//
// Design (docs/decisions/solu-ln-fused.md):
// - OpenMP over rows; each thread owns a scratch row of the accumulation type (float, or double
//   for float64), so every pass after the first reads the row from cache, not DRAM.
// - Forward saves per-row statistics only: log-sum-exp (solu) and lse, mean, rstd (solu_ln).
//   Backward recomputes softmax / pre-LN values from x and those statistics.
// - Inner loops are `omp simd` loops over the accumulation type with an inlined polynomial exp
//   (glibc expf does not vectorise), so they compile to AVX2/AVX-512 with -march=native.
// - Weight/bias gradients: per-thread partial sums over a fixed row partition, reduced in
//   thread order: deterministic for a given thread count, no atomics.
#include <pybind11/pybind11.h>

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

// ---------------------------------------------------------------------------------------
// exp that vectorises: Cephes-style range reduction + degree-6 polynomial (rel. err ~1e-7).
// NaN propagates; x below the float range gives exactly 0 (so -inf * exp(-inf) = NaN, as in
// torch); x above it gives +inf.
#pragma omp declare simd
static inline float vexp(float x) {
  const float hi = 88.3762626647949f;
  const float lo = -87.3365478515625f;  // below: result would be subnormal; flush to 0
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // n = round(x / ln2) with the 1.5 * 2^23 trick (exact for |n| < 2^22, no rounding mode calls)
  const float magic = 12582912.0f;
  float t = xc * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  int32_t ni = static_cast<int32_t>(n);
  int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float res = p * scale;
  res = x < lo ? 0.0f : res;
  res = x > hi ? std::numeric_limits<float>::infinity() : res;
  return res;
}

static inline double vexp(double x) { return std::exp(x); }

template <typename A>
static inline A row_max(const A* x, int64_t d) {
  A m = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < d; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// e[i] = exp(x[i] - m); returns sum(e). NaN anywhere in x makes the sum NaN.
template <typename A>
static inline A exp_shift_sum(const A* x, A m, A* e, int64_t d) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) {
    A v = vexp(x[i] - m);
    e[i] = v;
    s += v;
  }
  return s;
}

// Softmax statistics of a row: (max, log-sum-exp); e[] receives exp(x - max).
template <typename A>
static inline A softmax_lse(const A* x, A* e, int64_t d, A* inv_sum) {
  // All -inf, or any +inf: x - m is NaN somewhere, so the row is NaN, as in torch's softmax.
  A m = row_max(x, d);
  A s = exp_shift_sum(x, m, e, d);
  *inv_sum = A(1) / s;
  return m + std::log(s);
}

// ---------------------------------------------------------------------------------------
// Row I/O: the accumulation type is used as is; float16/bfloat16 rows are converted into a
// scratch row first (and results converted back), so the compute loops see only A.

template <typename T, typename A>
static inline const A* load_row(const T* src, A* buf, int64_t d) {
  if constexpr (std::is_same_v<T, A>) {
    (void)buf;
    (void)d;
    return src;
  } else {
    for (int64_t i = 0; i < d; ++i) buf[i] = to_float(src[i]);
    return buf;
  }
}

template <typename T, typename A>
static inline void store_row(T* dst, const A* src, int64_t d) {
  if constexpr (std::is_same_v<T, A>) {
    if (dst != src) std::memcpy(dst, src, sizeof(A) * d);
  } else {
    for (int64_t i = 0; i < d; ++i) store(dst[i], src[i]);
  }
}

// Where a row's results are computed: straight into the output for A == T, else a scratch row.
template <typename T, typename A>
static inline A* out_buf(T* dst, A* buf) {
  if constexpr (std::is_same_v<T, A>) {
    (void)buf;
    return dst;
  } else {
    (void)dst;
    return buf;
  }
}

// Contiguous block of rows for thread t of nt: a fixed partition (deterministic reductions).
static inline void row_range(int64_t rows, int t, int nt, int64_t* r0, int64_t* r1) {
  *r0 = rows * t / nt;
  *r1 = rows * (t + 1) / nt;
}

static inline int clamp_threads(int nthreads, int64_t rows) {
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, rows));
  return static_cast<int>(nt);
}

// ---------------------------------------------------------------------------------------
// solu

template <typename T>
void solu_forward_impl(const T* x, T* y, acc_t<T>* lse, int64_t rows, int64_t d, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t r0, r1;
    row_range(rows, t, nt, &r0, &r1);
    std::vector<A> xbuf(std::is_same_v<T, A> ? 0 : d), ebuf(d);
    for (int64_t r = r0; r < r1; ++r) {
      const A* xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      A* e = ebuf.data();
      A inv;
      A l = softmax_lse(xr, e, d, &inv);
      if (lse) lse[r] = l;
      A* o = out_buf<T, A>(y + r * d, e);
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] = xr[i] * (e[i] * inv);
      store_row<T, A>(y + r * d, o, d);
    }
  }
}

// dx = p * (g * (1 + x) - S),  S = sum_i g_i * h_i,  h = x * p,  p = exp(x - lse).
template <typename T>
void solu_backward_impl(const T* x, const acc_t<T>* lse, const T* gy, T* gx, int64_t rows,
                        int64_t d, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t r0, r1;
    row_range(rows, t, nt, &r0, &r1);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), gbuf(conv ? d : 0), pbuf(d);
    for (int64_t r = r0; r < r1; ++r) {
      const A* xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      const A* gr = load_row<T, A>(gy + r * d, gbuf.data(), d);
      A* p = pbuf.data();
      const A l = lse[r];
      A S = 0;
#pragma omp simd reduction(+ : S)
      for (int64_t i = 0; i < d; ++i) {
        A pi = vexp(xr[i] - l);
        p[i] = pi;
        S += gr[i] * (xr[i] * pi);
      }
      A* o = out_buf<T, A>(gx + r * d, p);
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] = p[i] * (gr[i] * (A(1) + xr[i]) - S);
      store_row<T, A>(gx + r * d, o, d);
    }
  }
}

// ---------------------------------------------------------------------------------------
// solu_ln. stats[r] = (lse, mean, rstd).

template <typename T>
void solu_ln_forward_impl(const T* x, const acc_t<T>* w, const acc_t<T>* b, T* y, T* pre,
                          acc_t<T>* stats, int64_t rows, int64_t d, double eps, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
  const A inv_d = A(1) / A(d);
  const A aeps = static_cast<A>(eps);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t r0, r1;
    row_range(rows, t, nt, &r0, &r1);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), hbuf(d), obuf(conv ? d : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const A* xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      A* h = hbuf.data();
      A inv;
      A l = softmax_lse(xr, h, d, &inv);
      A sh = 0;
#pragma omp simd reduction(+ : sh)
      for (int64_t i = 0; i < d; ++i) {
        A v = xr[i] * (h[i] * inv);
        h[i] = v;
        sh += v;
      }
      const A mean = sh * inv_d;
      A sv = 0;  // two-pass variance over the cached row: no cancellation
#pragma omp simd reduction(+ : sv)
      for (int64_t i = 0; i < d; ++i) {
        A c = h[i] - mean;
        sv += c * c;
      }
      const A rstd = A(1) / std::sqrt(sv * inv_d + aeps);
      if (stats) {
        stats[3 * r] = l;
        stats[3 * r + 1] = mean;
        stats[3 * r + 2] = rstd;
      }
      if (pre) store_row<T, A>(pre + r * d, h, d);
      A* o = out_buf<T, A>(y + r * d, obuf.data());
      if (w && b) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) o[i] = (h[i] - mean) * rstd * w[i] + b[i];
      } else if (w) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) o[i] = (h[i] - mean) * rstd * w[i];
      } else if (b) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) o[i] = (h[i] - mean) * rstd + b[i];
      } else {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) o[i] = (h[i] - mean) * rstd;
      }
      store_row<T, A>(y + r * d, o, d);
    }
  }
}

// Backward of y = LN(h) * w + b with h = SoLU(x), plus an extra gradient gpre on h.
//   xhat = (h - mean) * rstd,  gx̂ = gy * w,  a = mean(gx̂),  c = mean(gx̂ * xhat)
//   g_h = rstd * (gx̂ - a - xhat * c) + gpre
//   gx = p * (g_h * (1 + x) - S),  S = sum g_h * h (closed form from the pass-1 sums below)
// Pass 1 recomputes p, h, xhat and gathers the row sums; pass 2 writes gx.
template <typename T>
void solu_ln_backward_impl(const T* x, const acc_t<T>* w, const acc_t<T>* stats, const T* gy,
                           const T* gpre, T* gx, acc_t<T>* gw, acc_t<T>* gb, int64_t rows,
                           int64_t d, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
  const A inv_d = A(1) / A(d);
  const bool want_w = gw != nullptr && gy != nullptr;
  const bool want_b = gb != nullptr && gy != nullptr;
  std::vector<A> partial_w(want_w ? static_cast<size_t>(nt) * d : 0);
  std::vector<A> partial_b(want_b ? static_cast<size_t>(nt) * d : 0);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t r0, r1;
    row_range(rows, t, nt, &r0, &r1);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), gbuf(conv ? d : 0), qbuf(conv ? d : 0);
    std::vector<A> pbuf(d), xhbuf(d), zero(gy && gpre ? 0 : d, A(0));
    A* pw = want_w ? partial_w.data() + static_cast<size_t>(t) * d : nullptr;
    A* pb = want_b ? partial_b.data() + static_cast<size_t>(t) * d : nullptr;
    if (pw) std::fill(pw, pw + d, A(0));
    if (pb) std::fill(pb, pb + d, A(0));
    for (int64_t r = r0; r < r1; ++r) {
      const A* xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      const A* gyr = gy ? load_row<T, A>(gy + r * d, gbuf.data(), d) : zero.data();
      const A* gpr = gpre ? load_row<T, A>(gpre + r * d, qbuf.data(), d) : zero.data();
      const A l = stats[3 * r], mean = stats[3 * r + 1], rstd = stats[3 * r + 2];
      A* p = pbuf.data();
      A* xh = xhbuf.data();
      A sa = 0, sc = 0, sx = 0, sxx = 0, sgh = 0;
#pragma omp simd reduction(+ : sa, sc, sx, sxx, sgh)
      for (int64_t i = 0; i < d; ++i) {
        A pi = vexp(xr[i] - l);
        A hi = xr[i] * pi;
        A xhi = (hi - mean) * rstd;
        A g = w ? gyr[i] * w[i] : gyr[i];
        p[i] = pi;
        xh[i] = xhi;
        sa += g;
        sc += g * xhi;
        sx += xhi;
        sxx += xhi * xhi;
        sgh += gpr[i] * hi;
      }
      if (pw) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) pw[i] += gyr[i] * xh[i];
      }
      if (pb) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) pb[i] += gyr[i];
      }
      const A a = sa * inv_d, c = sc * inv_d;
      // S = sum_i g_h,i * h_i with h = mean + xhat / rstd, expanded over the pass-1 sums.
      const A S = sc - a * sx - c * sxx - rstd * mean * c * sx + sgh;
      A* o = out_buf<T, A>(gx + r * d, xh);
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        A g = w ? gyr[i] * w[i] : gyr[i];
        A gh = rstd * (g - a - xh[i] * c) + gpr[i];
        o[i] = p[i] * (gh * (A(1) + xr[i]) - S);
      }
      store_row<T, A>(gx + r * d, o, d);
    }
  }
  // Reduce the per-thread partials in thread order (deterministic), parallel over columns.
  if (want_w || want_b) {
#pragma omp parallel for num_threads(std::max(1, nthreads)) schedule(static)
    for (int64_t i = 0; i < d; ++i) {
      if (want_w) {
        A s = 0;
        for (int t = 0; t < nt; ++t) s += partial_w[static_cast<size_t>(t) * d + i];
        gw[i] = s;
      }
      if (want_b) {
        A s = 0;
        for (int t = 0; t < nt; ++t) s += partial_b[static_cast<size_t>(t) * d + i];
        gb[i] = s;
      }
    }
  } else {
    if (gw) std::fill(gw, gw + d, A(0));
    if (gb) std::fill(gb, gb + d, A(0));
  }
}

template <typename P>
static inline P* as(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

}  // namespace

void register_solu(py::module_& m) {
  // Every pointer argument is tensor.data_ptr() of a contiguous tensor (0 = absent). x, y, pre,
  // gy, gpre, gx have x's dtype (code); w, b, stats, gw, gb have the accumulation dtype
  // (float64 for float64 x, else float32).
  m.def(
      "solu_forward",
      [](uintptr_t x, uintptr_t y, uintptr_t lse, int64_t rows, int64_t d, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(code, T,
                                solu_forward_impl<T>(as<const T>(x), as<T>(y), as<acc_t<T>>(lse),
                                                     rows, d, nthreads));
      },
      py::arg("x"), py::arg("y"), py::arg("lse"), py::arg("rows"), py::arg("d"), py::arg("dtype"),
      py::arg("num_threads"));
  m.def(
      "solu_backward",
      [](uintptr_t x, uintptr_t lse, uintptr_t gy, uintptr_t gx, int64_t rows, int64_t d, int code,
         int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(code, T,
                                solu_backward_impl<T>(as<const T>(x), as<const acc_t<T>>(lse),
                                                      as<const T>(gy), as<T>(gx), rows, d,
                                                      nthreads));
      },
      py::arg("x"), py::arg("lse"), py::arg("gy"), py::arg("gx"), py::arg("rows"), py::arg("d"),
      py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "solu_ln_forward",
      [](uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, uintptr_t pre, uintptr_t stats,
         int64_t rows, int64_t d, double eps, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(
            code, T,
            solu_ln_forward_impl<T>(as<const T>(x), as<const acc_t<T>>(w), as<const acc_t<T>>(b),
                                    as<T>(y), as<T>(pre), as<acc_t<T>>(stats), rows, d, eps,
                                    nthreads));
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("pre"), py::arg("stats"),
      py::arg("rows"), py::arg("d"), py::arg("eps"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "solu_ln_backward",
      [](uintptr_t x, uintptr_t w, uintptr_t stats, uintptr_t gy, uintptr_t gpre, uintptr_t gx,
         uintptr_t gw, uintptr_t gb, int64_t rows, int64_t d, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(
            code, T,
            solu_ln_backward_impl<T>(as<const T>(x), as<const acc_t<T>>(w),
                                     as<const acc_t<T>>(stats), as<const T>(gy), as<const T>(gpre),
                                     as<T>(gx), as<acc_t<T>>(gw), as<acc_t<T>>(gb), rows, d,
                                     nthreads));
      },
      py::arg("x"), py::arg("w"), py::arg("stats"), py::arg("gy"), py::arg("gpre"), py::arg("gx"),
      py::arg("gw"), py::arg("gb"), py::arg("rows"), py::arg("d"), py::arg("dtype"),
      py::arg("num_threads"));
}

}  // namespace pyinterp
