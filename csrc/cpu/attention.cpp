// Attention-pattern statistics on the CPU: a blocked online softmax over key tiles that never
// builds the (T, T) pattern (docs/decisions/attention-stats-one-pass.md).
//
// attention_stats: per (batch, head, query) the log-sum-exp, the entropy and the attention mass
// on rule-selected keys. One task = (b, h, block of BQ queries); OpenMP runs tasks dynamically
// (causal blocks differ in cost, the longest first). For each key tile of BK keys:
//   S = (scale * Q_blk) K_tile^T      register-blocked 4 x 16 micro-kernel over a transposed tile
//   online softmax per query row:     m (running max), l = sum e^{s-m}, a = sum e^{s-m} (s-m),
//                                     dup/ind = sum e^{s-m} over the token-rule keys
// Entropy H = lse - E_p[s] = log l - a / l, accumulated relative to the running max so that it
// does not cancel when scores are large. Single-key rules (offset, first) need no loop: their
// mass is exp(q . k_j* * scale - lse), one dot product per query after the pass.
//
// attention_pattern: exp(s - lse) for given rows (lse from attention_stats), tile by tile.
//
// Non-finite scores (docs/decisions/nan-semantics.md), as the reference: a NaN among a query's
// attended scores makes its lse, entropy and masses NaN; a +inf makes lse +inf and the rest
// NaN; a -inf score is a key with probability 0. The online softmax ignores NaN (max skips
// it), so each query keeps a flag, set by a cheap check per tile, that the epilogue applies.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <omp.h>

#include "common.h"

namespace py = pybind11;

namespace pyinterp {
namespace {

constexpr int kBQ = 32;  // queries per task
constexpr int kBK = 64;  // keys per tile

// Rule kinds, matching pyinterp/backends/cpu/attention.py.
enum RuleKind : int { kOffset = 0, kPos = 1, kDuplicate = 2, kInduction = 3 };

// exp that vectorises: exp_reduced (common.h) with the argument clamped to the float range and
// 2^n applied as a multiply; x below the float range (including -inf) gives exactly 0.
#pragma omp declare simd
static inline float attn_exp(float x) {
  const float hi = 88.3762626647949f;
  const float lo = -87.3365478515625f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  float t;
  const float p = exp_reduced(xc, t);
  int32_t ni = static_cast<int32_t>(t - kExpMagic);
  int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float res = p * scale;
  res = x < lo ? 0.0f : res;
  res = x > hi ? std::numeric_limits<float>::infinity() : res;
  return res;
}
static inline double attn_exp(double x) { return std::exp(x); }

struct Args {
  const void* q;
  const void* k;
  const int64_t* tok;   // (B, Tk) or null
  const uint8_t* pad;   // (B, Tk) bool, 1 = padding key, or null
  int64_t B, H, Hkv, Tq, Tk, D, q_offset;
  bool causal;
  double scale;
};

// Per-thread scratch: the scaled query block, one transposed key tile, the score tile.
template <typename A>
struct Scratch {
  std::vector<A> Q, KT, S, kvalid;
  explicit Scratch(int64_t D) : Q(kBQ * D), KT(D * kBK), S(kBQ * kBK), kvalid(kBK) {}
};

template <typename T, typename A>
static void load_q_block(const Args& g, const T* qh, int64_t i0, int64_t nq, Scratch<A>& w) {
  const int64_t D = g.D;
  const A sc = static_cast<A>(g.scale);
  for (int64_t i = 0; i < kBQ; ++i) {
    A* dst = w.Q.data() + i * D;
    if (i < nq) {
      const T* src = qh + (i0 + i) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<A>(to_float(src[d])) * sc;
    } else {
      std::fill(dst, dst + D, A(0));
    }
  }
}

// KT[d][c] = k[j0 + c][d]; zero columns past nk. kvalid[c] = 1 unless the key is padding.
template <typename T, typename A>
static void load_k_tile(const Args& g, const T* kh, const uint8_t* padb, int64_t j0, int64_t nk,
                        Scratch<A>& w) {
  const int64_t D = g.D;
  for (int64_t c = 0; c < kBK; ++c) {
    if (c < nk) {
      const T* src = kh + (j0 + c) * D;
      for (int64_t d = 0; d < D; ++d) w.KT[d * kBK + c] = static_cast<A>(to_float(src[d]));
      w.kvalid[c] = (padb && padb[j0 + c]) ? A(0) : A(1);
    } else {
      for (int64_t d = 0; d < D; ++d) w.KT[d * kBK + c] = A(0);
      w.kvalid[c] = A(0);
    }
  }
}

// S[i][c] = sum_d Q[i][d] * KT[d][c] for the whole BQ x BK tile: 4 rows x 16 columns of
// accumulators stay in registers while d runs.
template <typename A>
static void score_tile(int64_t D, Scratch<A>& w) {
  const A* Q = w.Q.data();
  const A* KT = w.KT.data();
  A* S = w.S.data();
  for (int i0 = 0; i0 < kBQ; i0 += 4) {
    for (int j0 = 0; j0 < kBK; j0 += 16) {
      A acc[4][16] = {};
      for (int64_t d = 0; d < D; ++d) {
        const A* kr = KT + d * kBK + j0;
        for (int r = 0; r < 4; ++r) {
          const A qv = Q[(i0 + r) * D + d];
#pragma omp simd
          for (int c = 0; c < 16; ++c) acc[r][c] += qv * kr[c];
        }
      }
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 16; ++c) S[(i0 + r) * kBK + j0 + c] = acc[r][c];
    }
  }
}

// The score tile of the query block against keys [j0, j0 + nk).
template <typename T, typename A>
static void scores(const Args& g, const T* kh, const uint8_t* padb, int64_t j0, int64_t nk,
                   Scratch<A>& w) {
  load_k_tile<T, A>(g, kh, padb, j0, nk, w);
  score_tile<A>(g.D, w);
}

// One task of either kernel: batch b, head h, the query block [i0, i0 + nq); the keys that
// block can attend end at kend (causal); qh / kh: the head's queries and its kv head's keys.
template <typename T>
struct Task {
  int64_t b, h, i0, nq, kend;
  const T* qh;
  const T* kh;
  const uint8_t* padb;  // the batch row's padding flags, or null
};

template <typename T>
static Task<T> make_task(const Args& g, int64_t bh, int64_t qb) {
  const int64_t b = bh / g.H, h = bh % g.H, i0 = qb * kBQ;
  const int64_t nq = std::min<int64_t>(kBQ, g.Tq - i0);
  const int64_t last_pos = g.q_offset + i0 + nq - 1;
  return {b, h, i0, nq, g.causal ? std::min<int64_t>(g.Tk, last_pos + 1) : g.Tk,
          static_cast<const T*>(g.q) + (b * g.H + h) * g.Tq * g.D,
          static_cast<const T*>(g.k) + (b * g.Hkv + h / (g.H / g.Hkv)) * g.Tk * g.D,
          g.pad ? g.pad + b * g.Tk : nullptr};
}

// How many keys of the tile starting at j0 (nk keys) query position pi attends (<= 0: none).
static inline int64_t key_limit(const Args& g, int64_t pi, int64_t j0, int64_t nk) {
  return g.causal ? std::min<int64_t>(nk, pi - j0 + 1) : nk;
}

template <typename T, typename A>
static void stats_kernel(const Args& g, const int* kinds, const int64_t* ns, int64_t R, A* lse,
                         A* ent, A* mass, int nthreads) {
  const int64_t nqb = (g.Tq + kBQ - 1) / kBQ;
  const int64_t ntask = g.B * g.H * nqb;
  bool has_dup = false, has_ind = false;
  for (int64_t r = 0; r < R; ++r) {
    has_dup |= kinds[r] == kDuplicate;
    has_ind |= kinds[r] == kInduction;
  }
  const A ninf = -std::numeric_limits<A>::infinity();
  const int64_t plane = g.B * g.H * g.Tq;

#pragma omp parallel num_threads(nthreads)
  {
    Scratch<A> w(g.D);
    A m[kBQ], l[kBQ], a[kBQ], dup[kBQ], ind[kBQ];
    int bad[kBQ];  // 0 finite, 1 a +inf score, 2 a NaN score among the attended keys
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      // longest (causal) blocks first
      const auto [b, h, i0, nq, kend, qh, kh, padb] = make_task<T>(g, t / nqb, nqb - 1 - t % nqb);
      const int64_t* tok = g.tok ? g.tok + b * g.Tk : nullptr;
      load_q_block<T, A>(g, qh, i0, nq, w);
      for (int i = 0; i < kBQ; ++i) {
        m[i] = ninf;
        l[i] = a[i] = dup[i] = ind[i] = A(0);
        bad[i] = 0;
      }
      for (int64_t j0 = 0; j0 < kend; j0 += kBK) {
        const int64_t nk = std::min<int64_t>(kBK, kend - j0);
        scores<T, A>(g, kh, padb, j0, nk, w);
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t pi = g.q_offset + i0 + i;
          const int64_t climit = key_limit(g, pi, j0, nk);
          if (climit <= 0) continue;
          A* s = w.S.data() + i * kBK;
          const A* kv = w.kvalid.data();
          A mx = ninf, z = A(0);
#pragma omp simd reduction(max : mx) reduction(+ : z)
          for (int64_t c = 0; c < climit; ++c) {
            s[c] = kv[c] > A(0) ? s[c] : ninf;
            mx = s[c] > mx ? s[c] : mx;
            z += s[c] != ninf ? s[c] * A(0) : A(0);  // NaN iff a NaN or +inf score
          }
          if (z != z) {  // rare: flag the query, then drop those scores (exp of NaN is UB here)
            mx = ninf;
            for (int64_t c = 0; c < climit; ++c) {
              if (s[c] != s[c]) bad[i] = 2;
              else if (s[c] == -ninf && bad[i] == 0) bad[i] = 1;
              if (s[c] != s[c] || s[c] == -ninf) s[c] = ninf;
              mx = s[c] > mx ? s[c] : mx;
            }
          }
          if (mx == ninf) continue;  // every key of this tile is padding
          const A mnew = mx > m[i] ? mx : m[i];
          const A alpha = attn_exp(m[i] - mnew);  // 0 when m[i] = -inf
          const A delta = l[i] > A(0) ? m[i] - mnew : A(0);
          a[i] = alpha * (a[i] + delta * l[i]);
          l[i] *= alpha;
          dup[i] *= alpha;
          ind[i] *= alpha;
          A ls = 0, as = 0, ds = 0, is = 0;
          const int64_t ti = tok ? tok[pi] : 0;
#pragma omp simd reduction(+ : ls, as)
          for (int64_t c = 0; c < climit; ++c) {
            const A x = s[c] - mnew;
            const A p = attn_exp(x);
            ls += p;
            as += p > A(0) ? p * x : A(0);
            s[c] = p;  // keep p for the token rules
          }
          if (has_dup) {
            // j < pi and tokens[j] == tokens[pi]
            const int64_t lim = std::min<int64_t>(climit, pi - j0);
            for (int64_t c = 0; c < lim; ++c) ds += tok[j0 + c] == ti ? s[c] : A(0);
          }
          if (has_ind) {
            // 1 <= j <= pi and tokens[j - 1] == tokens[pi]
            for (int64_t c = (j0 == 0 ? 1 : 0); c < climit; ++c)
              is += tok[j0 + c - 1] == ti ? s[c] : A(0);
          }
          m[i] = mnew;
          l[i] += ls;
          a[i] += as;
          dup[i] += ds;
          ind[i] += is;
        }
      }
      // Epilogue: lse, entropy, rule masses; single-key rules by one dot product each.
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t pi = g.q_offset + i0 + i;
        const int64_t o = (b * g.H + h) * g.Tq + i0 + i;
        if (bad[i]) {
          const A nan = std::numeric_limits<A>::quiet_NaN();
          lse[o] = bad[i] == 2 ? nan : -ninf;
          ent[o] = nan;
          for (int64_t r = 0; r < R; ++r) mass[r * plane + o] = nan;
          continue;
        }
        const bool any = l[i] > A(0);
        const A L = any ? std::log(l[i]) : A(0);
        const A lse_i = any ? m[i] + L : ninf;
        lse[o] = lse_i;
        ent[o] = any ? L - a[i] / l[i] : A(0);
        for (int64_t r = 0; r < R; ++r) {
          A v = 0;
          if (any) {
            if (kinds[r] == kDuplicate) {
              v = dup[i] / l[i];
            } else if (kinds[r] == kInduction) {
              v = ind[i] / l[i];
            } else {
              const int64_t j = kinds[r] == kOffset ? pi - ns[r] : ns[r];
              if (j >= 0 && j < g.Tk && (!g.causal || j <= pi) && !(padb && padb[j])) {
                const A* qi = w.Q.data() + i * g.D;
                const T* kj = kh + j * g.D;
                A sdot = 0;
                for (int64_t d = 0; d < g.D; ++d) sdot += qi[d] * static_cast<A>(to_float(kj[d]));
                v = std::exp(sdot - lse_i);
              }
            }
          }
          mass[r * plane + o] = v;
        }
      }
    }
  }
}

template <typename T, typename A>
static void pattern_kernel(const Args& g, const A* lse, A* out, int nthreads) {
  const int64_t nqb = (g.Tq + kBQ - 1) / kBQ;
  const int64_t ntask = g.B * g.H * nqb;
#pragma omp parallel num_threads(nthreads)
  {
    Scratch<A> w(g.D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      const auto [b, h, i0, nq, kend, qh, kh, padb] = make_task<T>(g, t / nqb, t % nqb);
      load_q_block<T, A>(g, qh, i0, nq, w);
      A* orows = out + ((b * g.H + h) * g.Tq + i0) * g.Tk;
      std::fill(orows, orows + nq * g.Tk, A(0));
      for (int64_t j0 = 0; j0 < kend; j0 += kBK) {
        const int64_t nk = std::min<int64_t>(kBK, kend - j0);
        scores<T, A>(g, kh, padb, j0, nk, w);
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t pi = g.q_offset + i0 + i;
          const A lse_i = lse[(b * g.H + h) * g.Tq + i0 + i];
          const int64_t climit = key_limit(g, pi, j0, nk);
          const A ninf = -std::numeric_limits<A>::infinity();
          if (climit <= 0 || lse_i == ninf) continue;  // no attended key: a zero row
          const A* s = w.S.data() + i * kBK;
          const A* kv = w.kvalid.data();
          A* o = orows + i * g.Tk + j0;
          // a -inf score (masked or from non-finite inputs) is probability 0; NaN propagates
          for (int64_t c = 0; c < climit; ++c)
            o[c] = kv[c] > A(0) && s[c] != ninf ? std::exp(s[c] - lse_i) : A(0);
        }
      }
    }
  }
}

Args make_args(uintptr_t q, uintptr_t k, uintptr_t tok, uintptr_t pad, int64_t B, int64_t H,
               int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, int64_t q_offset, bool causal,
               double scale) {
  if (B < 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0 || Tq < 0 || Tk < 0 || D <= 0)
    throw std::invalid_argument("attention: invalid sizes");
  return Args{as<const void>(q), as<const void>(k), as<const int64_t>(tok),
              as<const uint8_t>(pad), B, H, Hkv, Tq, Tk, D, q_offset, causal, scale};
}

void attention_stats_cpu(uintptr_t q, uintptr_t k, uintptr_t tok, uintptr_t pad,
                         std::vector<int> kinds, std::vector<int64_t> ns, uintptr_t lse,
                         uintptr_t ent, uintptr_t mass, int64_t B, int64_t H, int64_t Hkv,
                         int64_t Tq, int64_t Tk, int64_t D, int64_t q_offset, bool causal,
                         double scale, int dtype, int nthreads) {
  const Args g = make_args(q, k, tok, pad, B, H, Hkv, Tq, Tk, D, q_offset, causal, scale);
  if (kinds.size() != ns.size()) throw std::invalid_argument("attention: kinds/ns mismatch");
  for (int kd : kinds)
    if ((kd == kDuplicate || kd == kInduction) && !tok)
      throw std::invalid_argument("attention: token rules need tokens");
  const int64_t R = static_cast<int64_t>(kinds.size());
  py::gil_scoped_release release;
  PYINTERP_DISPATCH_FLOAT(dtype, T, {
    using A = acc_t<T>;
    stats_kernel<T, A>(g, kinds.data(), ns.data(), R, as<A>(lse), as<A>(ent), as<A>(mass),
                       nthreads);
  });
}

void attention_pattern_cpu(uintptr_t q, uintptr_t k, uintptr_t pad, uintptr_t lse, uintptr_t out,
                           int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D,
                           int64_t q_offset, bool causal, double scale, int dtype, int nthreads) {
  const Args g = make_args(q, k, 0, pad, B, H, Hkv, Tq, Tk, D, q_offset, causal, scale);
  py::gil_scoped_release release;
  PYINTERP_DISPATCH_FLOAT(dtype, T, {
    using A = acc_t<T>;
    pattern_kernel<T, A>(g, as<const A>(lse), as<A>(out), nthreads);
  });
}

}  // namespace

void register_attention(py::module_& m) {
  m.def("attention_stats", &attention_stats_cpu,
        "online-softmax attention statistics (lse, entropy, rule masses) over key tiles");
  m.def("attention_pattern", &attention_pattern_cpu,
        "exp(q k^T * scale - lse) for the given query rows");
}

}  // namespace pyinterp
