// Attention-pattern statistics (CUDA C++, compiled at run time by NVRTC through CuPy).
// Same interface as csrc/cpu/attention.cpp and triton_kernels/attention.py; see
// docs/decisions/attention-stats-one-pass.md.
//
// attention_stats_<t>: one block per (batch x head, BM queries), all on grid x (grid y would
//   cap B * H at 65,535); one thread per query row.
//   The block's query rows (pre-scaled) and each key tile of BN keys are staged in shared
//   memory (row stride D + 1 so that threads reading different rows hit different banks; every
//   thread reads the same key element: a broadcast). Each thread runs the online softmax over
//   its row key by key: m (running max), l = sum e^{s-m}, a = sum e^{s-m} (s - m) (entropy
//   H = log l - a / l) and the token-rule sums (duplicate, induction), all rescaled when m
//   grows. Single-key rules (offset, first) are one dot product per query after the loop.
// attention_pattern_<t>: out[b, h, i, j] = exp(s_ij - lse_i) on attended keys, 0 elsewhere;
//   one thread per output element, the query row staged in shared memory per block; the blocks
//   of (batch x head, query, key block) all on grid x.
//
// fp16/bf16 are read as raw 16-bit words and converted in registers (no headers under NVRTC);
// accumulation in float (double for float64); outputs in the accumulation type.

#include "common.cuh"  // i64, f16_t / bf16_t, Acc, ld_acc

__device__ __forceinline__ float ninf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double ninf(double) { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ float qnan(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double qnan(double) { return __longlong_as_double(0x7fffffffffffffffLL); }
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// Rule kinds, matching pyinterp/backends/cpu/attention.py RULE_KINDS.
#define KIND_OFFSET 0
#define KIND_POS 1
#define KIND_DUP 2
#define KIND_IND 3

template <typename T>
__device__ void stats(const T* __restrict__ q, const T* __restrict__ k,
                      const i64* __restrict__ tok, const unsigned char* __restrict__ pad,
                      const int* __restrict__ kinds, const i64* __restrict__ ns, int R,
                      typename Acc<T>::type* __restrict__ lse, typename Acc<T>::type* __restrict__ ent,
                      typename Acc<T>::type* __restrict__ mass, int H, int group, int Tq, int Tk,
                      int D, int q_offset, int causal, double scale_f, int BN) {
  typedef typename Acc<T>::type A;
  extern __shared__ unsigned char smem_raw[];
  A* sQ = reinterpret_cast<A*>(smem_raw);        // blockDim.x rows x (D + 1)
  A* sK = sQ + blockDim.x * (D + 1);             // BN rows x (D + 1)
  const int ld = D + 1;
  const int BM = blockDim.x;
  const int n_qblocks = (Tq + BM - 1) / BM;
  const i64 bh = blockIdx.x / n_qblocks;
  const int qblock = blockIdx.x % n_qblocks;
  const i64 b = bh / H, h = bh % H;
  const int Hkv = H / group;
  const int i = qblock * BM + threadIdx.x;  // query row
  const bool row_ok = i < Tq;
  const int pi = q_offset + i;
  const A scale = static_cast<A>(scale_f);
  const T* qh = q + bh * Tq * D;
  const T* kh = k + (b * Hkv + h / group) * static_cast<i64>(Tk) * D;
  const i64* tb = tok ? tok + b * Tk : nullptr;
  const unsigned char* pb = pad ? pad + b * Tk : nullptr;

  // stage the block's query rows (coalesced over d)
  const int row0 = qblock * BM;
  for (int e = threadIdx.x; e < BM * D; e += BM) {
    const int r = e / D, d = e % D;
    sQ[r * ld + d] = (row0 + r < Tq) ? ld_acc(qh + static_cast<i64>(row0 + r) * D + d) * scale : A(0);
  }
  bool has_dup = false, has_ind = false;
  for (int r = 0; r < R; ++r) {
    has_dup |= kinds[r] == KIND_DUP;
    has_ind |= kinds[r] == KIND_IND;
  }
  const i64 ti = (tb && row_ok) ? tb[pi] : 0;
  A m = ninf(A(0)), l = 0, a = 0, dsum = 0, isum = 0;
  // A NaN (bad 2) or +inf (bad 1) attended score: lse NaN / +inf, the rest NaN; a -inf score
  // is probability 0 (docs/decisions/nan-semantics.md). Such scores skip the online softmax.
  int bad = 0;
  const int last = min(Tq - 1, row0 + BM - 1) + q_offset;
  const int kend = causal ? min(Tk, last + 1) : Tk;
  const A* qrow = sQ + threadIdx.x * ld;
  for (int j0 = 0; j0 < kend; j0 += BN) {
    const int nk = min(BN, kend - j0);
    __syncthreads();  // previous tile fully consumed (and sQ written on the first pass)
    for (int e = threadIdx.x; e < nk * D; e += BM) {
      const int c = e / D, d = e % D;
      sK[c * ld + d] = ld_acc(kh + static_cast<i64>(j0 + c) * D + d);
    }
    __syncthreads();
    if (!row_ok) continue;
    const int climit = causal ? min(nk, pi - j0 + 1) : nk;
    for (int c = 0; c < climit; ++c) {
      const int j = j0 + c;
      if (pb && pb[j]) continue;
      const A* kr = sK + c * ld;
      A s = 0;
      for (int d = 0; d < D; ++d) s += qrow[d] * kr[d];
      if (!(s > ninf(A(0)) && s < -ninf(A(0)))) {  // NaN or +-inf
        if (s != s) bad = 2;
        else if (s > A(0) && bad == 0) bad = 1;
        continue;
      }
      const bool dup_hit = has_dup && j < pi && tb[j] == ti;
      const bool ind_hit = has_ind && j >= 1 && tb[j - 1] == ti;
      if (s > m) {  // new maximum: rescale the sums (alpha = 0 on the first key)
        const A alpha = l > A(0) ? exp_acc(m - s) : A(0);
        a = alpha * (a + (l > A(0) ? (m - s) * l : A(0)));
        l = alpha * l + A(1);
        dsum = alpha * dsum + (dup_hit ? A(1) : A(0));
        isum = alpha * isum + (ind_hit ? A(1) : A(0));
        m = s;
      } else {
        const A x = s - m;
        const A p = exp_acc(x);
        l += p;
        a += p * x;
        if (dup_hit) dsum += p;
        if (ind_hit) isum += p;
      }
    }
  }
  if (!row_ok) return;
  const i64 o = bh * Tq + i;
  const i64 plane = static_cast<i64>(gridDim.x / n_qblocks) * Tq;  // B * H * Tq
  if (bad) {
    lse[o] = bad == 2 ? qnan(A(0)) : -ninf(A(0));
    ent[o] = qnan(A(0));
    for (int r = 0; r < R; ++r) mass[r * plane + o] = qnan(A(0));
    return;
  }
  const bool any = l > A(0);
  const A L = any ? log_acc(l) : A(0);
  const A lse_i = any ? m + L : ninf(A(0));
  lse[o] = lse_i;
  ent[o] = any ? L - a / l : A(0);
  for (int r = 0; r < R; ++r) {
    A v = 0;
    if (any) {
      if (kinds[r] == KIND_DUP) {
        v = dsum / l;
      } else if (kinds[r] == KIND_IND) {
        v = isum / l;
      } else {
        const i64 j = kinds[r] == KIND_OFFSET ? pi - ns[r] : ns[r];
        if (j >= 0 && j < Tk && (!causal || j <= pi) && !(pb && pb[j])) {
          A s = 0;
          for (int d = 0; d < D; ++d) s += qrow[d] * ld_acc(kh + j * D + d);
          v = exp_acc(s - lse_i);
        }
      }
    }
    mass[r * plane + o] = v;
  }
}

template <typename T>
__device__ void pattern(const T* __restrict__ q, const T* __restrict__ k,
                        const unsigned char* __restrict__ pad,
                        const typename Acc<T>::type* __restrict__ lse,
                        typename Acc<T>::type* __restrict__ out, int H, int group, int Tq, int Tk,
                        int D, int q_offset, int causal, double scale_f) {
  typedef typename Acc<T>::type A;
  extern __shared__ unsigned char smem_raw[];
  A* sq = reinterpret_cast<A*>(smem_raw);  // the query row, D values
  // blockIdx.x = ((b * H + h) * Tq + i) * n_key_blocks + key block (grid x: up to 2^31 - 1)
  const int nkb = (Tk + blockDim.x - 1) / blockDim.x;
  const i64 row = blockIdx.x / nkb;
  const i64 bh = row / Tq;
  const int i = static_cast<int>(row % Tq);
  const i64 b = bh / H, h = bh % H;
  const int Hkv = H / group;
  const int j = static_cast<int>(blockIdx.x % nkb) * blockDim.x + threadIdx.x;
  const T* qr = q + (bh * Tq + i) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) sq[d] = ld_acc(qr + d) * static_cast<A>(scale_f);
  __syncthreads();
  if (j >= Tk) return;
  const A lse_i = lse[bh * Tq + i];
  const int pi = q_offset + i;
  A v = 0;
  const bool valid = (!causal || j <= pi) && !(pad && pad[b * Tk + j]) && lse_i != ninf(A(0));
  if (valid) {
    const T* kr = k + ((b * Hkv + h / group) * static_cast<i64>(Tk) + j) * D;
    A s = 0;
    for (int d = 0; d < D; ++d) s += sq[d] * ld_acc(kr + d);
    v = s == ninf(A(0)) ? A(0) : exp_acc(s - lse_i);  // -inf score: 0; NaN propagates
  }
  out[(bh * Tq + i) * static_cast<i64>(Tk) + j] = v;
}

#define DEFINE_KERNELS(SUFFIX, T)                                                              \
  extern "C" __global__ void attention_stats_##SUFFIX(                                         \
      const T* q, const T* k, const i64* tok, const unsigned char* pad, const int* kinds,      \
      const i64* ns, int R, Acc<T>::type* lse, Acc<T>::type* ent, Acc<T>::type* mass, int H,   \
      int group, int Tq, int Tk, int D, int q_offset, int causal, double scale, int BN) {       \
    stats<T>(q, k, tok, pad, kinds, ns, R, lse, ent, mass, H, group, Tq, Tk, D, q_offset,      \
             causal, scale, BN);                                                               \
  }                                                                                            \
  extern "C" __global__ void attention_pattern_##SUFFIX(                                       \
      const T* q, const T* k, const unsigned char* pad, const Acc<T>::type* lse,               \
      Acc<T>::type* out, int H, int group, int Tq, int Tk, int D, int q_offset, int causal,    \
      double scale) {                                                                          \
    pattern<T>(q, k, pad, lse, out, H, group, Tq, Tk, D, q_offset, causal, scale);             \
  }

DEFINE_KERNELS(f32, float)
DEFINE_KERNELS(f64, double)
DEFINE_KERNELS(f16, f16_t)
DEFINE_KERNELS(bf16, bf16_t)
