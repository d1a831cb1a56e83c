// Shared device helpers for the CUDA kernels compiled at run time by NVRTC (no CUDA headers
// under NVRTC): 16-bit storage types read as raw words and converted in registers, the
// accumulation type rule (float, double for double) and rounding stores.
#pragma once

typedef long long i64;
struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float ld_acc(const float* p) { return __ldg(p); }
__device__ __forceinline__ double ld_acc(const double* p) { return __ldg(p); }
__device__ __forceinline__ float ld_acc(const f16_t* p) {
  unsigned short h = __ldg(reinterpret_cast<const unsigned short*>(p));
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ float ld_acc(const bf16_t* p) {
  unsigned short h = __ldg(reinterpret_cast<const unsigned short*>(p));
  return __uint_as_float(static_cast<unsigned int>(h) << 16);
}

__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(double* p, double v) { *p = v; }
__device__ __forceinline__ void st(f16_t* p, float v) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p->bits = h;
}
__device__ __forceinline__ void st(bf16_t* p, float v) {
  unsigned int u = __float_as_uint(v);
  unsigned short h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h = static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    h = static_cast<unsigned short>(u >> 16);
  }
  p->bits = h;
}
