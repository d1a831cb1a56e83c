// Multi-output sparse decode CPU kernels (family "multi_decode"; contract in
// pyinterp/ops/multi_decode/function.py). One sparse code (values, indices) (N, k) with global
// latent indices decodes through a stack of decoders W (P, d_src, d) into G outputs:
//
//   out[g, n] = bias[g] + sum_j [p >= 0 and lo[g] <= i < hi[g]] coef[n, j] * W[p, i % d_src]
//   with i = idx[n, j], p = dmap[(i / d_src) * G + g].
//
// - md_gather: one row n per iteration, G accumulators; each active entry's decoder row is
//   read once per output it reaches (outputs sharing a decoder, as Matryoshka prefixes, hit
//   it in cache). No dense (N, d_sae) code, no (N, k, d) tensor.
// - md_backward: grad values and grad W in one pass over a CSR of the entries by global latent
//   (sae_build_csr's counting sort, entry order kept): each latent reads each decoder row it uses once, and
//   each of its entries reads its output-gradient row once for both products. Each latent
//   sums its entries in that order and adds the outputs sharing a decoder: no atomics,
//   bit-identical for any thread count. A decoder row belongs to exactly one latent (the op
//   checks that every decoder of the stack serves one source block), so latents write
//   disjoint rows.
// IEEE semantics: an entry that reaches an output always adds coef * W (0 * inf = nan); one
// that does not adds nothing.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "common.h"

namespace py = pybind11;

namespace pyinterp {
namespace {

struct Plan {
  const int64_t* dmap;  // (S, G)
  const int64_t* lo;    // (G,)
  const int64_t* hi;    // (G,)
  int64_t S, G, d_src;

  // decoder index of latent i for output g, or -1 when i does not reach g
  inline int64_t decoder(int64_t i, int64_t g) const {
    if (i < lo[g] || i >= hi[g]) return -1;
    const int64_t s = i / d_src;
    if (s < 0 || s >= S) return -1;
    return dmap[s * G + g];
  }
};

template <typename T>
void gather_impl(const acc_t<T>* coef, const int64_t* idx, const T* W, const T* bias, T* out,
                 int64_t rows, int64_t k, int64_t d, const Plan& plan, int nthreads) {
  using A = acc_t<T>;
  const int64_t G = plan.G;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<A> acc(G * d);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        A* a = acc.data() + g * d;
        if (bias) {
          const T* b = bias + g * d;
          for (int64_t t = 0; t < d; ++t) a[t] = to_float(b[t]);
        } else {
          std::fill(a, a + d, A(0));
        }
      }
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = idx[n * k + j];
        const A c = coef[n * k + j];
        const int64_t r = i % plan.d_src;
        if (j + 1 < k) {  // the next entry's rows are random reads: start them now
          const int64_t i2 = idx[n * k + j + 1];
          for (int64_t g = 0; g < G; ++g) {
            const int64_t p2 = plan.decoder(i2, g);
            if (p2 < 0) continue;
            const char* w2 = reinterpret_cast<const char*>(W + (p2 * plan.d_src + i2 % plan.d_src) * d);
            for (int64_t b = 0; b < d * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(w2 + b);
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          const int64_t p = plan.decoder(i, g);
          if (p < 0) continue;
          const T* w = W + (p * plan.d_src + r) * d;
          A* a = acc.data() + g * d;
#pragma omp simd
          for (int64_t t = 0; t < d; ++t) a[t] += c * static_cast<A>(to_float(w[t]));
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        T* o = out + (g * rows + n) * d;
        const A* a = acc.data() + g * d;
        for (int64_t t = 0; t < d; ++t) store(o[t], a[t]);
      }
    }
  }
}

// Zero the gradient rows of latent i (row r of every decoder its source block maps through).
template <typename T>
void zero_rows(T* out, const Plan& plan, int64_t i, int64_t r, int64_t d) {
  const int64_t s = i / plan.d_src;
  for (int64_t g = 0; g < plan.G; ++g) {
    const int64_t p = plan.dmap[s * plan.G + g];
    if (p < 0) continue;
    T* o = out + (p * plan.d_src + r) * d;
    for (int64_t t = 0; t < d; ++t) store(o[t], acc_t<T>(0));
  }
}

// The whole backward in one pass over the entries grouped by latent: for latent i and each
// output g it reaches, the decoder row W[p, r] is read once and every entry e of i reads
// g[out, row(e)] once for both products: grad values gv[e] += dot(g[out, row(e)], W[p, r])
// (gv may be null) and grad W[p, r] += coef[e] g[out, row(e)] (out may be null). Every row of
// every decoder a source block maps through is written (zeros where no entry reaches it); the
// caller zeroes decoders no block maps through. Entries belong to one latent and decoder rows
// to one latent: no races.
template <typename T>
void backward_impl(const acc_t<T>* coef, const acc_t<T>* X, const T* W, const int64_t* offsets,
                   const int64_t* order, int64_t rows, int64_t k, int64_t d, acc_t<T>* gv,
                   T* out, const Plan& plan, int nthreads) {
  using A = acc_t<T>;
  const int64_t G = plan.G;
  const int64_t n_lat = plan.S * plan.d_src;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<A> acc(G * d);
    std::vector<A> wrow(d);
    std::vector<int64_t> dec(G);
#pragma omp for schedule(dynamic, 64)
    for (int64_t i = 0; i < n_lat; ++i) {
      const int64_t start = offsets[i], end = offsets[i + 1];
      const int64_t r = i % plan.d_src;
      if (start == end) {  // no entry: the latent's decoder rows get zero gradient
        if (out) zero_rows(out, plan, i, r, d);
        continue;
      }
      if (gv) {
        for (int64_t q = start; q < end; ++q) gv[order[q]] = A(0);
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t p = plan.decoder(i, g);
        int64_t slot = g;
        for (int64_t h = 0; h < g && p >= 0; ++h) {
          if (dec[h] == p) {
            slot = h;
            break;
          }
        }
        dec[g] = (slot == g) ? p : -1;
        if (p < 0) continue;
        const T* w = W + (p * plan.d_src + r) * d;
        for (int64_t t = 0; t < d; ++t) wrow[t] = static_cast<A>(to_float(w[t]));
        A* a = acc.data() + slot * d;
        if (out && slot == g) std::fill(a, a + d, A(0));
        const A* wr = wrow.data();
        for (int64_t q = start; q < end; ++q) {
          const int64_t e = order[q];
          const A* x = X + (g * rows + e / k) * d;
          if (q + 1 < end) {  // the next entry's gradient row is a random read: start it now
            const char* x2 = reinterpret_cast<const char*>(X + (g * rows + order[q + 1] / k) * d);
            for (int64_t b = 0; b < d * static_cast<int64_t>(sizeof(A)); b += 64) __builtin_prefetch(x2 + b);
          }
          if (gv) {
            A part = 0;
#pragma omp simd reduction(+ : part)
            for (int64_t t = 0; t < d; ++t) part += x[t] * wr[t];
            gv[e] += part;
          }
          if (out) {
            const A c = coef[e];
#pragma omp simd
            for (int64_t t = 0; t < d; ++t) a[t] += c * x[t];
          }
        }
      }
      if (!out) continue;
      for (int64_t g = 0; g < G; ++g) {
        if (dec[g] < 0) continue;
        T* o = out + (dec[g] * plan.d_src + r) * d;
        const A* a = acc.data() + g * d;
        for (int64_t t = 0; t < d; ++t) store(o[t], a[t]);
      }
      // decoders of this latent's source that no reached output used (out of range): zero
      const int64_t s = i / plan.d_src;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t p = plan.dmap[s * G + g];
        if (p < 0) continue;
        bool written = false;
        for (int64_t h = 0; h < G && !written; ++h) written = dec[h] == p;
        if (written) continue;
        T* o = out + (p * plan.d_src + r) * d;
        for (int64_t t = 0; t < d; ++t) store(o[t], A(0));
        dec[g] = p;  // once per decoder
      }
    }
  }
}

}  // namespace

void register_multi_decode(py::module_& m) {
  // Pointers are tensor.data_ptr() of contiguous tensors (0 = absent); "code" is the dtype of
  // W (and of bias / out); coef, g and the dot products are in W's accumulation type.
  m.def(
      "md_gather",
      [](uintptr_t coef, uintptr_t idx, uintptr_t W, uintptr_t bias, uintptr_t out, int64_t rows,
         int64_t k, int64_t d, uintptr_t dmap, uintptr_t lo, uintptr_t hi, int64_t S, int64_t G,
         int64_t d_src, int code, int nthreads) {
        py::gil_scoped_release nogil;
        Plan plan{as<const int64_t>(dmap), as<const int64_t>(lo), as<const int64_t>(hi), S, G,
                  d_src};
        PYINTERP_DISPATCH_FLOAT(code, T,
                                gather_impl<T>(as<const acc_t<T>>(coef), as<const int64_t>(idx),
                                               as<const T>(W), as<const T>(bias), as<T>(out),
                                               rows, k, d, plan, nthreads));
      },
      py::arg("coef"), py::arg("indices"), py::arg("W"), py::arg("bias"), py::arg("out"),
      py::arg("rows"), py::arg("k"), py::arg("d"), py::arg("dmap"), py::arg("lo"), py::arg("hi"),
      py::arg("S"), py::arg("G"), py::arg("d_src"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "md_backward",
      [](uintptr_t coef, uintptr_t X, uintptr_t W, uintptr_t offsets, uintptr_t order,
         int64_t rows, int64_t k, int64_t d, uintptr_t gv, uintptr_t out, uintptr_t dmap,
         uintptr_t lo, uintptr_t hi, int64_t S, int64_t G, int64_t d_src, int code,
         int nthreads) {
        py::gil_scoped_release nogil;
        Plan plan{as<const int64_t>(dmap), as<const int64_t>(lo), as<const int64_t>(hi), S, G,
                  d_src};
        PYINTERP_DISPATCH_FLOAT(
            code, T,
            backward_impl<T>(as<const acc_t<T>>(coef), as<const acc_t<T>>(X), as<const T>(W),
                             as<const int64_t>(offsets), as<const int64_t>(order), rows, k, d,
                             as<acc_t<T>>(gv), as<T>(out), plan, nthreads));
      },
      py::arg("coef"), py::arg("X"), py::arg("W"), py::arg("offsets"), py::arg("order"),
      py::arg("rows"), py::arg("k"), py::arg("d"), py::arg("grad_values"), py::arg("out"),
      py::arg("dmap"), py::arg("lo"), py::arg("hi"), py::arg("S"), py::arg("G"),
      py::arg("d_src"), py::arg("dtype"), py::arg("num_threads"));
}

}  // namespace pyinterp
