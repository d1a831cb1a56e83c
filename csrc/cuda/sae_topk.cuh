// The top-k epilogue of the CUDA SAE encoder (included by sae.cu).
//
// One block per row folds a float32 chunk of pre-activations into the row's running top-k,
// kept in global memory as k packed int64 keys sorted descending (key = order-preserving int32
// of the value << 32 | (2^32 - 1 - column): value desc, then column asc, the tie rule). The
// block stages the running keys and every chunk element that beats the current k-th key in
// shared memory (CAP slots); when the buffer could overflow it bitonic-sorts it and keeps the
// best k. Keys are unique, so the result does not depend on the order threads append.
//
// Kept in its own header (needing only i64, atomicAdd, __syncthreads and the thread indices)
// so that tests/cuda_emu compiles this exact code for the host and runs one block on 256 OS
// threads with a barrier that checks every thread waits at the same __syncthreads.

#define KMAX 1024
#define CAP 2048
#define MIN_KEY (-9223372036854775807LL - 1LL)

__device__ __forceinline__ i64 pack_key(float v, i64 col) {
  v = v + 0.0f;  // -0.0 -> +0.0: ties with +0.0 like the reference
  int b = __float_as_int(v);
  int k32 = b >= 0 ? b : (b ^ 0x7fffffff);
  if (v != v) k32 = 0x7fffffff;  // any NaN ranks above +inf (docs/decisions/nan-semantics.md)
  return (static_cast<i64>(k32) << 32) | (0xffffffffLL - col);
}

__device__ __forceinline__ void unpack_key(i64 key, float* v, i64* col) {
  int k32 = static_cast<int>(key >> 32);
  int b = k32 >= 0 ? k32 : (k32 ^ 0x7fffffff);
  *v = __int_as_float(b);
  *col = 0xffffffffLL - (key & 0xffffffffLL);
}

// Bitonic sort of buf[0, CAP) descending; all threads of the block take part.
__device__ void sort_desc(i64* buf) {
  for (int size = 2; size <= CAP; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < CAP / 2; t += blockDim.x) {
        int lo = 2 * t - (t & (stride - 1));
        int hi = lo + stride;
        bool desc = ((lo & size) == 0);
        i64 a = buf[lo], b = buf[hi];
        if ((a < b) == desc) {
          buf[lo] = b;
          buf[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

// Sort, keep the best k at the front, refill the tail with MIN_KEY; returns the k-th key.
// Every thread of the block must call it (it holds barriers).
__device__ i64 compact(i64* buf, int* count, int k) {
  for (int t = threadIdx.x; t < CAP; t += blockDim.x) {
    if (t >= *count) buf[t] = MIN_KEY;
  }
  __syncthreads();
  sort_desc(buf);
  __syncthreads();
  if (threadIdx.x == 0) *count = k;
  __syncthreads();
  return buf[k - 1];
}

__device__ void topk_chunk(const float* __restrict__ pre, i64 ld, i64 cols, i64 col0, int k,
                           i64* __restrict__ state) {
  __shared__ i64 buf[CAP];
  __shared__ int count;
  const i64 row = blockIdx.x;
  const float* p = pre + row * ld;
  i64* s = state + row * k;
  for (int t = threadIdx.x; t < k; t += blockDim.x) buf[t] = s[t];
  if (threadIdx.x == 0) count = k;
  __syncthreads();
  i64 thr = buf[k - 1];  // state is sorted descending
  for (i64 c0 = 0; c0 < cols; c0 += blockDim.x) {
    // The compaction decision must be the same in every thread (compact() holds barriers).
    // Every thread reads count, then a barrier, and only then may a thread append: without
    // the barrier a fast warp's atomicAdd below could raise count before a slow warp reads
    // it, and that warp alone would enter compact() (a divergent __syncthreads: corrupt
    // top-k or a hang).
    const int n = count;
    __syncthreads();
    if (n + static_cast<int>(blockDim.x) > CAP) thr = compact(buf, &count, k);
    i64 c = c0 + threadIdx.x;
    if (c < cols) {
      i64 key = pack_key(p[c], col0 + c);
      if (key > thr) {
        int pos = atomicAdd(&count, 1);  // integer atomic: the kept set is order-free
        buf[pos] = key;
      }
    }
    __syncthreads();
  }
  compact(buf, &count, k);
  for (int t = threadIdx.x; t < k; t += blockDim.x) s[t] = buf[t];
}
