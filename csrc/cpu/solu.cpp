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
#include <utility>
#include <vector>

#include <omp.h>
#include <sys/mman.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define PYINTERP_HAVE_F16C 1
#endif

#include "common.h"

namespace py = pybind11;

namespace pyinterp {
namespace {

// ---------------------------------------------------------------------------------------
// exp of a non-positive argument that vectorises: exp_reduced (common.h), then 2^n added
// straight into the exponent bits. Softmax only needs x <= 0 (x - max). NaN propagates; x below
// -87 gives exactly 0, so exp(-inf) = 0 and -inf * exp(-inf) = NaN as in torch.
static inline float vexp_neg(float x) {
  const float lo = -87.0f;
  // No clamp: below lo (and for -inf) the bits computed here are garbage, but the final
  // select returns 0 there; NaN stays NaN through every step.
  float t;
  float p = exp_reduced(x, t);
  uint32_t tb, pb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&pb, &p, 4);
  // multiply by 2^n (for x >= lo, n >= -126, and p >= 1 when n = -126: no underflow).
  // Unsigned arithmetic: below lo the bits wrap, which is defined (UBSan found the signed
  // overflow); those lanes are replaced by 0 below.
  pb += tb << 23;
  float res;
  std::memcpy(&res, &pb, 4);
  return x < lo ? 0.0f : res;
}

static inline double vexp_neg(double x) { return std::exp(x); }

// Inner loops: 8 lanes (one AVX2 register of floats); `omp simd` allows the reductions to be
// reordered, which plain -O3 (no -ffast-math) would not.
#define PYINTERP_SIMD _Pragma("omp simd simdlen(8)")
#define PYINTERP_SIMD_REDUCE(...) _Pragma(PYINTERP_STR(omp simd simdlen(8) reduction(__VA_ARGS__)))
#define PYINTERP_STR(x) #x

// Cheap reductions are latency-bound with one vector accumulator; these keep 32 lanes
// (4 AVX2 registers) of independent partial results and combine them at the end.
constexpr int kLanes = 32;

template <typename A>
static inline A row_max(const A* __restrict x, int64_t d) {
  // NaN is skipped here but reappears in exp(x - m), so a NaN row still ends up NaN.
  A acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = -std::numeric_limits<A>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    PYINTERP_SIMD
    for (int j = 0; j < kLanes; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  }
  for (int j = 0; i < d; ++i, ++j) acc[j] = x[i] > acc[j] ? x[i] : acc[j];
  A m = acc[0];
  for (int j = 1; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// sum_i (u_i * scale - mean)^2
template <typename A>
static inline A sum_sq_dev(const A* __restrict u, A scale, A mean, int64_t d) {
  A acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    PYINTERP_SIMD
    for (int j = 0; j < kLanes; ++j) {
      A c = u[i + j] * scale - mean;
      acc[j] += c * c;
    }
  }
  for (int j = 0; i < d; ++i, ++j) {
    A c = u[i] * scale - mean;
    acc[j] += c * c;
  }
  A s = 0;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
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
    int64_t i = 0;
#ifdef PYINTERP_HAVE_F16C
    if constexpr (std::is_same_v<T, half_t>) {  // hardware conversion, 8 at a time
      for (; i + 8 <= d; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(h));
      }
    }
#endif
    for (; i < d; ++i) buf[i] = to_float(src[i]);
    return buf;
  }
}

template <typename T, typename A>
static inline void store_row(T* dst, const A* src, int64_t d) {
  if constexpr (std::is_same_v<T, A>) {
    if (dst != src) std::memcpy(dst, src, sizeof(A) * d);
  } else {
    int64_t i = 0;
#ifdef PYINTERP_HAVE_F16C
    if constexpr (std::is_same_v<T, half_t>) {  // round to nearest even, as store() does
      for (; i + 8 <= d; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
      }
    }
#endif
    for (; i < d; ++i) store(dst[i], src[i]);
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

// Outputs are fresh allocations from torch: for large ones, ask the kernel for transparent huge
// pages before the first write, so that the first touch faults in 2 MiB at a time instead of
// 4 KiB (docs/decisions/cpu-huge-page-outputs.md). A hint only: errors are ignored.
static inline void advise_huge_pages(const void* p, size_t nbytes) {
#ifdef MADV_HUGEPAGE
  const uintptr_t huge = uintptr_t(2) << 20;
  if (p == nullptr || nbytes < 4 * huge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(p) + nbytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)nbytes;
#endif
}

// Contiguous block of rows [r0, r1) for thread t of nt: a fixed partition (deterministic
// reductions).
static inline std::pair<int64_t, int64_t> row_range(int64_t rows, int t, int nt) {
  return {rows * t / nt, rows * (t + 1) / nt};
}

static inline int clamp_threads(int nthreads, int64_t rows) {
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, rows));
  return static_cast<int>(nt);
}

// ---------------------------------------------------------------------------------------
// solu. Per row: max; u = x * exp(x - max) and its sum; y = u / sum(exp). Saves lse.
// A row of all -inf, or with +inf, makes x - max NaN somewhere: the row is NaN, as in torch.

template <typename T>
void solu_forward_impl(const T* x, T* y, acc_t<T>* lse, int64_t rows, int64_t d, int nthreads) {
  using A = acc_t<T>;
  advise_huge_pages(y, sizeof(T) * rows * d);
  int nt = clamp_threads(nthreads, rows);
#pragma omp parallel num_threads(nt)
  {
    const auto [r0, r1] = row_range(rows, omp_get_thread_num(), nt);
    std::vector<A> xbuf(std::is_same_v<T, A> ? 0 : d), ubuf(d);
    for (int64_t r = r0; r < r1; ++r) {
      const A* __restrict xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      A* __restrict u = ubuf.data();
      const A m = row_max(xr, d);
      A s = 0;
      PYINTERP_SIMD_REDUCE(+ : s)
      for (int64_t i = 0; i < d; ++i) {
        A e = vexp_neg(xr[i] - m);
        u[i] = xr[i] * e;
        s += e;
      }
      if (lse) lse[r] = m + std::log(s);
      const A inv = A(1) / s;
      A* __restrict o = out_buf<T, A>(y + r * d, u);
      PYINTERP_SIMD
      for (int64_t i = 0; i < d; ++i) o[i] = u[i] * inv;
      store_row<T, A>(y + r * d, o, d);
    }
  }
}

// gx = p * (g * (1 + x) - S),  S = sum_i g_i h_i,  h = x p,  p = exp(x - lse).
template <typename T>
void solu_backward_impl(const T* x, const acc_t<T>* lse, const T* gy, T* gx, int64_t rows,
                        int64_t d, int nthreads) {
  using A = acc_t<T>;
  advise_huge_pages(gx, sizeof(T) * rows * d);
  int nt = clamp_threads(nthreads, rows);
#pragma omp parallel num_threads(nt)
  {
    const auto [r0, r1] = row_range(rows, omp_get_thread_num(), nt);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), gbuf(conv ? d : 0), pbuf(d);
    for (int64_t r = r0; r < r1; ++r) {
      const A* __restrict xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      const A* __restrict gr = load_row<T, A>(gy + r * d, gbuf.data(), d);
      A* __restrict p = pbuf.data();
      const A l = lse[r];
      A S = 0;
      PYINTERP_SIMD_REDUCE(+ : S)
      for (int64_t i = 0; i < d; ++i) {
        A pi = vexp_neg(xr[i] - l);
        p[i] = pi;
        S += gr[i] * (xr[i] * pi);
      }
      A* __restrict o = out_buf<T, A>(gx + r * d, p);
      PYINTERP_SIMD
      for (int64_t i = 0; i < d; ++i) o[i] = p[i] * (gr[i] * (A(1) + xr[i]) - S);
      store_row<T, A>(gx + r * d, o, d);
    }
  }
}

// ---------------------------------------------------------------------------------------
// solu_ln. stats[r] = (lse, mean, rstd) of row r.
// Per row: pass 1 max (the one read of x from memory), pass 2 u = x exp(x - max) with
// sum(exp) and sum(u) (the mean), pass 3 variance about the mean over the cached row
// (two-pass: no cancellation), pass 4 the output (and pre-LN value if asked).

template <typename T>
void solu_ln_forward_impl(const T* x, const acc_t<T>* w, const acc_t<T>* b, T* y, T* pre,
                          acc_t<T>* stats, int64_t rows, int64_t d, double eps, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
  const A inv_d = A(1) / A(d);
  const A aeps = static_cast<A>(eps);
  advise_huge_pages(y, sizeof(T) * rows * d);
  advise_huge_pages(pre, sizeof(T) * rows * d);
#pragma omp parallel num_threads(nt)
  {
    const auto [r0, r1] = row_range(rows, omp_get_thread_num(), nt);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), ubuf(d), obuf(conv ? d : 0), one(w ? 0 : d, A(1)),
        zero(b ? 0 : d, A(0));
    const A* __restrict wv = w ? w : one.data();
    const A* __restrict bv = b ? b : zero.data();
    for (int64_t r = r0; r < r1; ++r) {
      const A* __restrict xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      A* __restrict u = ubuf.data();
      const A m = row_max(xr, d);
      A s = 0, su = 0;
      PYINTERP_SIMD_REDUCE(+ : s, su)
      for (int64_t i = 0; i < d; ++i) {
        A e = vexp_neg(xr[i] - m);
        A ui = xr[i] * e;
        u[i] = ui;
        s += e;
        su += ui;
      }
      const A inv = A(1) / s;
      const A mean = su * inv * inv_d;
      const A sv = sum_sq_dev(u, inv, mean, d);  // two-pass: no cancellation
      const A rstd = A(1) / std::sqrt(sv * inv_d + aeps);
      if (stats) {
        stats[3 * r] = m + std::log(s);
        stats[3 * r + 1] = mean;
        stats[3 * r + 2] = rstd;
      }
      if (pre) {
        T* pr = pre + r * d;
        A* __restrict po = out_buf<T, A>(pr, obuf.data());
        PYINTERP_SIMD
        for (int64_t i = 0; i < d; ++i) po[i] = u[i] * inv;
        store_row<T, A>(pr, po, d);
      }
      // y = (h - mean) rstd w + b; h - mean first, so a constant row gives exactly 0
      A* __restrict o = out_buf<T, A>(y + r * d, obuf.data());
      PYINTERP_SIMD
      for (int64_t i = 0; i < d; ++i) o[i] = (u[i] * inv - mean) * rstd * wv[i] + bv[i];
      store_row<T, A>(y + r * d, o, d);
    }
  }
}

// Backward of y = LN(h) w + b with h = SoLU(x), plus an extra gradient gpre on h.
//   xhat = (h - mean) rstd,  g^ = gy w,  a = mean(g^),  c = mean(g^ xhat)
//   g_h = rstd (g^ - a - xhat c) + gpre
//   gx = p (g_h (1 + x) - S),  S = sum g_h h  (closed form over the pass-1 sums, below)
// Pass 1 reads x, gy, gpre once, recomputes p, h, xhat, gathers the row sums and the
// weight/bias partials; pass 2 writes gx from the cached row.
template <typename T>
void solu_ln_backward_impl(const T* x, const acc_t<T>* w, const acc_t<T>* stats, const T* gy,
                           const T* gpre, T* gx, acc_t<T>* gw, acc_t<T>* gb, int64_t rows,
                           int64_t d, int nthreads) {
  using A = acc_t<T>;
  int nt = clamp_threads(nthreads, rows);
  const A inv_d = A(1) / A(d);
  advise_huge_pages(gx, sizeof(T) * rows * d);
  const bool want_w = gw != nullptr && gy != nullptr;
  const bool want_b = gb != nullptr && gy != nullptr;
  // Per-thread partial sums (zero-initialised), reduced in thread order below.
  std::vector<A> partial_w(static_cast<size_t>(nt) * d, A(0));
  std::vector<A> partial_b(static_cast<size_t>(nt) * d, A(0));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const auto [r0, r1] = row_range(rows, t, nt);
    const bool conv = !std::is_same_v<T, A>;
    std::vector<A> xbuf(conv ? d : 0), gbuf(conv ? d : 0), qbuf(conv ? d : 0);
    std::vector<A> pbuf(d), xhbuf(d), zero(gy && gpre ? 0 : d, A(0)), one(w ? 0 : d, A(1));
    const A* __restrict wv = w ? w : one.data();
    A* __restrict pw = partial_w.data() + static_cast<size_t>(t) * d;
    A* __restrict pb = partial_b.data() + static_cast<size_t>(t) * d;
    for (int64_t r = r0; r < r1; ++r) {
      const A* __restrict xr = load_row<T, A>(x + r * d, xbuf.data(), d);
      const A* __restrict gyr = gy ? load_row<T, A>(gy + r * d, gbuf.data(), d) : zero.data();
      const A* __restrict gpr = gpre ? load_row<T, A>(gpre + r * d, qbuf.data(), d) : zero.data();
      const A l = stats[3 * r], mean = stats[3 * r + 1], rstd = stats[3 * r + 2];
      A* __restrict p = pbuf.data();
      A* __restrict xh = xhbuf.data();
      A sa = 0, sc = 0, sx = 0, sxx = 0, sgh = 0;
      PYINTERP_SIMD_REDUCE(+ : sa, sc, sx, sxx, sgh)
      for (int64_t i = 0; i < d; ++i) {
        A pi = vexp_neg(xr[i] - l);
        A hi = xr[i] * pi;
        A xhi = (hi - mean) * rstd;
        A gyi = gyr[i];
        A g = gyi * wv[i];
        p[i] = pi;
        xh[i] = xhi;
        pw[i] += gyi * xhi;
        pb[i] += gyi;
        sa += g;
        sc += g * xhi;
        sx += xhi;
        sxx += xhi * xhi;
        sgh += gpr[i] * hi;
      }
      const A a = sa * inv_d, c = sc * inv_d;
      // S = sum_i g_h,i h_i with h = mean + xhat / rstd, expanded over the pass-1 sums.
      const A S = sc - a * sx - c * sxx - rstd * mean * c * sx + sgh;
      A* __restrict o = out_buf<T, A>(gx + r * d, xh);
      PYINTERP_SIMD
      for (int64_t i = 0; i < d; ++i) {
        A gh = rstd * (gyr[i] * wv[i] - a - xh[i] * c) + gpr[i];
        o[i] = p[i] * (gh * (A(1) + xr[i]) - S);
      }
      store_row<T, A>(gx + r * d, o, d);
    }
  }
  // Reduce the partials in thread order (deterministic for a thread count), parallel over d.
  if (gw || gb) {
#pragma omp parallel for num_threads(std::max(1, nthreads)) schedule(static)
    for (int64_t i = 0; i < d; ++i) {
      A sw = 0, sb = 0;
      for (int t = 0; t < nt; ++t) {
        sw += partial_w[static_cast<size_t>(t) * d + i];
        sb += partial_b[static_cast<size_t>(t) * d + i];
      }
      if (gw) gw[i] = want_w ? sw : A(0);
      if (gb) gb[i] = want_b ? sb : A(0);
    }
  }
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
