// Shared helpers for the CPU kernels: dtype codes, float16/bfloat16 <-> float conversion.
// Tensors arrive as raw pointers (tensor.data_ptr()) with a dtype code; kernels accumulate
// in float (double for float64) and release the GIL while they run.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace pyinterp {

// Must match pyinterp/backends/cpu/__init__.py DTYPE_CODES.
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }

inline float to_float(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(half_t v) {
  // IEEE half -> float, handling subnormals, inf and NaN.
  uint32_t h = v.bits;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      man &= 0x3ffu;
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (man << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }

template <> inline bf16_t from_float<bf16_t>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

template <> inline half_t from_float<half_t>(float f) {
  // float -> IEEE half, round to nearest even, with overflow to inf and subnormals.
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return half_t{static_cast<uint16_t>(sign | 0x7e00u)};
  if (absu >= 0x477ff000u) return half_t{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (absu < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    float a;
    std::memcpy(&a, &absu, 4);
    // 2^-24 is the subnormal unit; nearbyint rounds half to even in the default mode.
    uint32_t m = static_cast<uint32_t>(std::nearbyint(a * 16777216.0f));
    return half_t{static_cast<uint16_t>(sign | m)};
  }
  uint32_t mant_odd = (absu >> 13) & 1u;
  absu += 0xfffu + mant_odd;
  uint32_t h = ((absu - (112u << 23)) >> 13);
  return half_t{static_cast<uint16_t>(sign | h)};
}

// Accumulation type: float for every storage type but double.
template <typename T> struct acc { using type = float; };
template <> struct acc<double> { using type = double; };
template <typename T> using acc_t = typename acc<T>::type;

inline void store(float& dst, float v) { dst = v; }
inline void store(double& dst, double v) { dst = v; }
inline void store(bf16_t& dst, float v) { dst = from_float<bf16_t>(v); }
inline void store(half_t& dst, float v) { dst = from_float<half_t>(v); }

// A pointer argument of a binding (tensor.data_ptr(), 0 = absent) as a typed pointer.
template <typename P>
inline P* as(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

// The core of an exp that vectorises (glibc expf does not), Cephes-style: x = n ln2 + r with
// n = round(x / ln2) (adding 1.5 * 2^23 leaves n in the low mantissa bits of t), and e^r by a
// degree-6 polynomial (max rel. err ~1e-7). Returns e^r and sets t; the caller scales by 2^n
// and decides what happens outside the float range (NaN passes through every step).
constexpr float kExpMagic = 12582912.0f;  // 1.5 * 2^23: n = t - kExpMagic
inline float exp_reduced(float x, float& t) {
  t = x * 1.44269504088896341f + kExpMagic;
  const float n = t - kExpMagic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r2 + r + 1.0f;
}

// Dispatch a templated functor body on the dtype code.
#define PYINTERP_DISPATCH_FLOAT(code, T, ...)                               \
  switch (code) {                                                            \
    case ::pyinterp::kF32: { using T = float; __VA_ARGS__; break; }          \
    case ::pyinterp::kF16: { using T = ::pyinterp::half_t; __VA_ARGS__; break; } \
    case ::pyinterp::kBF16: { using T = ::pyinterp::bf16_t; __VA_ARGS__; break; } \
    case ::pyinterp::kF64: { using T = double; __VA_ARGS__; break; }         \
    default: throw std::invalid_argument("unsupported dtype code");          \
  }

// Dispatch on the code of an accumulation buffer (float32 or float64).
#define PYINTERP_DISPATCH_ACC(code, P, ...)                                  \
  if ((code) == ::pyinterp::kF64) { using P = double; __VA_ARGS__; }         \
  else { using P = float; __VA_ARGS__; }

}  // namespace pyinterp
