// Sparse SAE CPU kernels (family "sae"): the top-k epilogue after a BLAS GEMM, threshold
// selection, the sparse decoder (row gather), and the sparse backward (gathered dots and a
// deterministic scatter of rows by latent).
//
// Design (docs/decisions/sae-cpu-chunked-epilogue.md, sae-deterministic-scatter.md):
// - The launcher computes pre-activations in row x column chunks with torch.addmm (MKL), so
//   the (N, d_sae) matrix never exists; after each chunk `sae_topk_update` folds the chunk
//   into a per-row running top-k (a min-heap of k (value, index) pairs, worst at the root).
//   Blocks of 16 pre-activations are skipped with one vectorised max against the root, so
//   the scan costs about one compare per element.
// - Tie rule: (value desc, index asc). Within a row, columns arrive in increasing index
//   order, so a later equal value never displaces an earlier one.
// - Scatter (grad W_dec, grad W_enc, grad b_enc) builds a CSR of entries by latent with a
//   counting sort (entries keep their (row, slot) order), then each latent sums its entries
//   in that order: no atomics, bit-identical for any thread count.
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

// a is worse than b in the top-k order: value desc, index asc, NaN above every number
// (NaNs among themselves by index; docs/decisions/nan-semantics.md).
template <typename P>
static inline bool worse(P av, int64_t ai, P bv, int64_t bi) {
  const bool an = av != av, bn = bv != bv;
  if (an | bn) return an && bn ? ai > bi : bn;
  return av < bv || (av == bv && ai > bi);
}

// v (arriving after every index in the heap) enters a heap whose worst entry is thr.
template <typename P>
static inline bool beats(P v, P thr) {
  return thr == thr && (v > thr || v != v);
}

template <typename P>
static inline void sift_down(P* hv, int64_t* hi, int64_t n, int64_t pos) {
  P v = hv[pos];
  int64_t id = hi[pos];
  for (;;) {
    int64_t c = 2 * pos + 1;
    if (c >= n) break;
    if (c + 1 < n && worse(hv[c + 1], hi[c + 1], hv[c], hi[c])) ++c;
    if (!worse(hv[c], hi[c], v, id)) break;
    hv[pos] = hv[c];
    hi[pos] = hi[c];
    pos = c;
  }
  hv[pos] = v;
  hi[pos] = id;
}

template <typename P>
static inline void sift_up(P* hv, int64_t* hi, int64_t pos) {
  P v = hv[pos];
  int64_t id = hi[pos];
  while (pos > 0) {
    int64_t p = (pos - 1) / 2;
    if (!worse(v, id, hv[p], hi[p])) break;
    hv[pos] = hv[p];
    hi[pos] = hi[p];
    pos = p;
  }
  hv[pos] = v;
  hi[pos] = id;
}

// Put (v, id) in place of the heap's worst entry; returns the new worst value.
template <typename P>
static inline P replace_root(P* hv, int64_t* hi, int64_t k, P v, int64_t id) {
  hv[0] = v;
  hi[0] = id;
  sift_down(hv, hi, k, 0);
  return hv[0];
}

// Fold one row segment (pre[0..cols), global indices col0..) into a heap of capacity k.
// `ordered`: indices arrive in increasing order across calls, so a strict `>` against the
// root implements the tie rule; otherwise the full (value, index) comparison is used.
template <typename P>
static inline void heap_scan(const P* pre, int64_t cols, int64_t col0, int64_t k, P* hv,
                             int64_t* hi, int64_t& count, bool ordered = true) {
  int64_t c = 0;
  // fill phase
  while (count < k && c < cols) {
    hv[count] = pre[c];
    hi[count] = col0 + c;
    sift_up(hv, hi, count);
    ++count;
    ++c;
  }
  if (c >= cols) return;
  P thr = hv[0];
  if (!ordered) {
    for (; c < cols; ++c) {
      P v = pre[c];
      if ((v >= thr || v != v) && worse(hv[0], hi[0], v, col0 + c))
        thr = replace_root(hv, hi, k, v, col0 + c);
    }
    return;
  }
  constexpr int B = 16;
  for (; c + B <= cols; c += B) {
    P m = pre[c];
    P z = P(0);  // NaN when the block holds a NaN (or an infinity): scan it then
#pragma omp simd reduction(max : m) reduction(+ : z)
    for (int t = 0; t < B; ++t) {
      m = std::max(m, pre[c + t]);
      z += pre[c + t] * P(0);
    }
    if (!(m > thr) && z == P(0)) continue;
    for (int t = 0; t < B; ++t) {
      P v = pre[c + t];
      // equal values arrive later = larger index = worse: never enter
      if (beats(v, thr)) thr = replace_root(hv, hi, k, v, col0 + c + t);
    }
  }
  for (; c < cols; ++c) {
    P v = pre[c];
    if (beats(v, thr)) thr = replace_root(hv, hi, k, v, col0 + c);
  }
}

template <typename P>
void topk_update_impl(const P* pre, int64_t ld, int64_t rows, int64_t cols, int64_t col0, int64_t k,
                      P* hv, int64_t* hi, int64_t* cnt, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    heap_scan(pre + r * ld, cols, col0, k, hv + r * k, hi + r * k, cnt[r]);
  }
}

// Batch mode (BatchTopK): one heap of capacity k for the whole (rows, cols) chunk, whose
// entry (r, c) has the global index base + r * row_stride + c.
template <typename P>
void topk_update_batch_impl(const P* pre, int64_t ld, int64_t rows, int64_t cols, int64_t base,
                            int64_t row_stride, int64_t k, P* hv, int64_t* hi, int64_t* cnt) {
  for (int64_t r = 0; r < rows; ++r) {
    heap_scan(pre + r * ld, cols, base + r * row_stride, k, hv, hi, cnt[0], false);
  }
}

// Sort each row's heap by (value desc, index asc); write ReLU(value) in T and the index.
template <typename P, typename T>
void topk_finalize_impl(const P* hv, const int64_t* hi, int64_t rows, int64_t k, T* vals,
                        int64_t* idx, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<std::pair<P, int64_t>> buf(k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < k; ++j) buf[j] = {hv[r * k + j], hi[r * k + j]};
      std::sort(buf.begin(), buf.end(), [](const auto& a, const auto& b) {
        return worse(b.first, b.second, a.first, a.second);
      });
      for (int64_t j = 0; j < k; ++j) {
        P v = buf[j].first;
        store(vals[r * k + j], static_cast<acc_t<T>>(v > P(0) || v != v ? v : P(0)));  // ReLU
        idx[r * k + j] = buf[j].second;
      }
    }
  }
}

// Entries with pre > threshold (scalar, or per column when thr != nullptr), sorted by the tie
// rule; the first `width` are written (value, index), the rest padded with 0 / 0.
// count[r] = min(number active, width).
template <typename P, typename T>
void select_threshold_impl(const P* pre, int64_t rows, int64_t cols, P thr_scalar, const P* thr,
                           int64_t width, T* vals, int64_t* idx, int64_t* count, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<std::pair<P, int64_t>> buf;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      buf.clear();
      const P* p = pre + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        P t = thr ? thr[c] : thr_scalar;
        if (p[c] > t || p[c] != p[c]) buf.push_back({p[c], c});  // NaN is active
      }
      auto better = [](const auto& a, const auto& b) {
        return worse(b.first, b.second, a.first, a.second);
      };
      int64_t m = std::min<int64_t>(width, static_cast<int64_t>(buf.size()));
      std::partial_sort(buf.begin(), buf.begin() + m, buf.end(), better);
      for (int64_t j = 0; j < width; ++j) {
        if (j < m) {
          store(vals[r * width + j], static_cast<acc_t<T>>(buf[j].first));
          idx[r * width + j] = buf[j].second;
        } else {
          store(vals[r * width + j], static_cast<acc_t<T>>(0));
          idx[r * width + j] = 0;
        }
      }
      count[r] = m;
    }
  }
}

// out[n] = bias + sum_j coef[n, j] * W[idx[n, j]]; coef in the accumulation type P.
template <typename T>
void gather_impl(const acc_t<T>* coef, const int64_t* idx, const T* W, const T* bias, T* out,
                 int64_t rows, int64_t k, int64_t d, int nthreads) {
  using P = acc_t<T>;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<P> acc(d);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      if (bias) {
        for (int64_t i = 0; i < d; ++i) acc[i] = to_float(bias[i]);
      } else {
        std::fill(acc.begin(), acc.end(), P(0));
      }
      P* a = acc.data();
      for (int64_t j = 0; j < k; ++j) {
        const P c = coef[n * k + j];
        if (c == P(0)) continue;
        const T* w = W + idx[n * k + j] * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) a[i] += c * static_cast<P>(to_float(w[i]));
      }
      T* o = out + n * d;
      for (int64_t i = 0; i < d; ++i) store(o[i], a[i]);
    }
  }
}

// out[n, j] = dot(g[n], W[idx[n, j]]); g (rows, d) in P, out in P.
template <typename T>
void gather_dot_impl(const acc_t<T>* g, const int64_t* idx, const T* W, acc_t<T>* out, int64_t rows,
                     int64_t k, int64_t d, int nthreads) {
  using P = acc_t<T>;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const P* gr = g + n * d;
    for (int64_t j = 0; j < k; ++j) {
      const T* w = W + idx[n * k + j] * d;
      P s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < d; ++i) s += gr[i] * static_cast<P>(to_float(w[i]));
      out[n * k + j] = s;
    }
  }
}

// Counting sort of the nnz entries by latent: offsets (d_sae + 1), order (nnz) lists entry
// positions per latent in increasing position order.
void build_csr(const int64_t* idx, int64_t nnz, int64_t d_sae, int64_t* offsets, int64_t* order) {
  std::fill(offsets, offsets + d_sae + 1, int64_t(0));
  for (int64_t e = 0; e < nnz; ++e) ++offsets[idx[e] + 1];
  for (int64_t l = 0; l < d_sae; ++l) offsets[l + 1] += offsets[l];
  std::vector<int64_t> cursor(offsets, offsets + d_sae);
  for (int64_t e = 0; e < nnz; ++e) order[cursor[idx[e]]++] = e;
}

// For every latent l: row_l = sum over its entries e (CSR order) of coef[e] * X[e / k];
// written to out[l] (out (d_sae, d)) or, when transposed, to out[:, l] (out (d, d_sae)).
// colsum[l] = sum of coef[e] when given. Deterministic: fixed summation order per latent.
template <typename T>
void scatter_rows_impl(const acc_t<T>* coef, const acc_t<T>* X, const int64_t* offsets,
                       const int64_t* order, int64_t k, int64_t d_sae, int64_t d, bool transposed,
                       T* out, acc_t<T>* colsum, int nthreads) {
  using P = acc_t<T>;
  constexpr int64_t B = 16;  // latents per block: transposed writes fill whole cache lines
  const int64_t nblocks = (d_sae + B - 1) / B;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<P> acc(B * d);
#pragma omp for schedule(dynamic, 16)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t l0 = blk * B;
      const int64_t nb = std::min(B, d_sae - l0);
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t l = l0 + b;
        P* a = acc.data() + b * d;
        std::fill(a, a + d, P(0));
        P cs = 0;
        for (int64_t p = offsets[l]; p < offsets[l + 1]; ++p) {
          const int64_t e = order[p];
          const P c = coef[e];
          cs += c;
          const P* x = X + (e / k) * d;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) a[i] += c * x[i];
        }
        if (colsum) colsum[l] = cs;
        if (!transposed) {
          T* o = out + l * d;
          for (int64_t i = 0; i < d; ++i) store(o[i], a[i]);
        }
      }
      if (transposed) {
        for (int64_t i = 0; i < d; ++i) {
          T* o = out + i * d_sae + l0;
          for (int64_t b = 0; b < nb; ++b) store(o[b], acc[b * d + i]);
        }
      }
    }
  }
}

}  // namespace

void register_sae(py::module_& m) {
  // Pointers are tensor.data_ptr() of contiguous tensors (0 = absent). "pcode" is the dtype
  // code of the pre-activation / accumulation buffers (float32 or float64); "code" the dtype
  // of the stored tensors. Index tensors are int64.
  m.def(
      "sae_topk_update",
      [](uintptr_t pre, int64_t ld, int64_t rows, int64_t cols, int64_t col0, int64_t k,
         uintptr_t hv, uintptr_t hi, uintptr_t cnt, int pcode, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_ACC(pcode, P,
                              topk_update_impl<P>(as<const P>(pre), ld, rows, cols, col0, k,
                                                  as<P>(hv), as<int64_t>(hi), as<int64_t>(cnt),
                                                  nthreads));
      },
      py::arg("pre"), py::arg("ld"), py::arg("rows"), py::arg("cols"), py::arg("col0"),
      py::arg("k"), py::arg("heap_values"), py::arg("heap_indices"), py::arg("counts"),
      py::arg("pcode"), py::arg("num_threads"));
  m.def(
      "sae_topk_update_batch",
      [](uintptr_t pre, int64_t ld, int64_t rows, int64_t cols, int64_t base, int64_t row_stride,
         int64_t k, uintptr_t hv, uintptr_t hi, uintptr_t cnt, int pcode) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_ACC(pcode, P,
                              topk_update_batch_impl<P>(as<const P>(pre), ld, rows, cols, base,
                                                        row_stride, k, as<P>(hv), as<int64_t>(hi),
                                                        as<int64_t>(cnt)));
      },
      py::arg("pre"), py::arg("ld"), py::arg("rows"), py::arg("cols"), py::arg("base"),
      py::arg("row_stride"), py::arg("k"), py::arg("heap_values"), py::arg("heap_indices"),
      py::arg("counts"), py::arg("pcode"));
  m.def(
      "sae_topk_finalize",
      [](uintptr_t hv, uintptr_t hi, int64_t rows, int64_t k, uintptr_t vals, uintptr_t idx,
         int code, int nthreads) {
        py::gil_scoped_release nogil;
        // the heap is in the accumulation type of the output's dtype
        PYINTERP_DISPATCH_FLOAT(code, T,
                                topk_finalize_impl<acc_t<T>, T>(as<const acc_t<T>>(hv),
                                                                as<const int64_t>(hi), rows, k,
                                                                as<T>(vals), as<int64_t>(idx),
                                                                nthreads));
      },
      py::arg("heap_values"), py::arg("heap_indices"), py::arg("rows"), py::arg("k"),
      py::arg("values"), py::arg("indices"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "sae_select_threshold",
      [](uintptr_t pre, int64_t rows, int64_t cols, double thr_scalar, uintptr_t thr, int64_t width,
         uintptr_t vals, uintptr_t idx, uintptr_t count, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(
            code, T,
            select_threshold_impl<acc_t<T>, T>(as<const acc_t<T>>(pre), rows, cols,
                                               static_cast<acc_t<T>>(thr_scalar),
                                               as<const acc_t<T>>(thr), width, as<T>(vals),
                                               as<int64_t>(idx), as<int64_t>(count), nthreads));
      },
      py::arg("pre"), py::arg("rows"), py::arg("cols"), py::arg("threshold"),
      py::arg("thresholds"), py::arg("width"), py::arg("values"), py::arg("indices"),
      py::arg("counts"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "sae_gather",
      [](uintptr_t coef, uintptr_t idx, uintptr_t W, uintptr_t bias, uintptr_t out, int64_t rows,
         int64_t k, int64_t d, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(code, T,
                                gather_impl<T>(as<const acc_t<T>>(coef), as<const int64_t>(idx),
                                               as<const T>(W), as<const T>(bias), as<T>(out), rows,
                                               k, d, nthreads));
      },
      py::arg("coef"), py::arg("indices"), py::arg("W"), py::arg("bias"), py::arg("out"),
      py::arg("rows"), py::arg("k"), py::arg("d"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "sae_gather_dot",
      [](uintptr_t g, uintptr_t idx, uintptr_t W, uintptr_t out, int64_t rows, int64_t k, int64_t d,
         int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(code, T,
                                gather_dot_impl<T>(as<const acc_t<T>>(g), as<const int64_t>(idx),
                                                   as<const T>(W), as<acc_t<T>>(out), rows, k, d,
                                                   nthreads));
      },
      py::arg("g"), py::arg("indices"), py::arg("W"), py::arg("out"), py::arg("rows"),
      py::arg("k"), py::arg("d"), py::arg("dtype"), py::arg("num_threads"));
  m.def(
      "sae_build_csr",
      [](uintptr_t idx, int64_t nnz, int64_t d_sae, uintptr_t offsets, uintptr_t order) {
        py::gil_scoped_release nogil;
        build_csr(as<const int64_t>(idx), nnz, d_sae, as<int64_t>(offsets), as<int64_t>(order));
      },
      py::arg("indices"), py::arg("nnz"), py::arg("d_sae"), py::arg("offsets"), py::arg("order"));
  m.def(
      "sae_scatter_rows",
      [](uintptr_t coef, uintptr_t X, uintptr_t offsets, uintptr_t order, int64_t k, int64_t d_sae,
         int64_t d, bool transposed, uintptr_t out, uintptr_t colsum, int code, int nthreads) {
        py::gil_scoped_release nogil;
        PYINTERP_DISPATCH_FLOAT(
            code, T,
            scatter_rows_impl<T>(as<const acc_t<T>>(coef), as<const acc_t<T>>(X),
                                 as<const int64_t>(offsets), as<const int64_t>(order), k, d_sae, d,
                                 transposed, as<T>(out), as<acc_t<T>>(colsum), nthreads));
      },
      py::arg("coef"), py::arg("X"), py::arg("offsets"), py::arg("order"), py::arg("k"),
      py::arg("d_sae"), py::arg("d"), py::arg("transposed"), py::arg("out"), py::arg("colsum"),
      py::arg("dtype"), py::arg("num_threads"));
}

}  // namespace pyinterp
