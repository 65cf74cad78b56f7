// SPDX-License-Identifier: Apache-2.0
// The microscaling kernels' element-level device code (mx_kernels.cuh): the formats as template
// arguments, the element conversions of values already brought into range by their block's
// factor (e2m1 in hardware on the Blackwell arch-specific targets, else packed bf16 arithmetic
// for bf16 rows and the spec's scalar code for the rest; fp8 in hardware on sm_89+), the block
// divisor as an exact reciprocal, and a slot's values as floats and sign bits.
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"
#include "cuda/memory.cuh"
#include "microscaling.h"
#include "mx_params.h"

// The FP4 (e2m1) conversion instruction exists on the arch-specific and family-specific targets
// of Blackwell (cvt.rn.satfinite.e2m1x2.f32, PTX 8.6+).
#if !FK_HIP && defined(__CUDA_ARCH__) &&                                                                   \
    (defined(__CUDA_ARCH_FEAT_SM100_ALL) || defined(__CUDA_ARCH_FEAT_SM101_ALL) ||                         \
     defined(__CUDA_ARCH_FEAT_SM103_ALL) || defined(__CUDA_ARCH_FEAT_SM110_ALL) ||                         \
     defined(__CUDA_ARCH_FEAT_SM120_ALL) || defined(__CUDA_ARCH_FEAT_SM121_ALL) ||                         \
     (defined(__CUDA_ARCH_SPECIFIC__) && __CUDA_ARCH_SPECIFIC__ >= 1000) ||                                 \
     (defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000))
#define FK_HW_E2M1 1
#else
#define FK_HW_E2M1 0
#endif

namespace fusion_kernels {
namespace dev {

// The formats as kernel template arguments (MxKind's values).
constexpr int kFmtE4m3 = static_cast<int>(MxKind::kMxfp8E4m3);
constexpr int kFmtE5m2 = static_cast<int>(MxKind::kMxfp8E5m2);
constexpr int kFmtMxfp4 = static_cast<int>(MxKind::kMxfp4);
constexpr int kFmtNvfp4 = static_cast<int>(MxKind::kNvfp4);

template <int FMT>
__host__ __device__ constexpr int block_elems() {
  return FMT == kFmtNvfp4 ? mx::kNvfp4Block : mx::kMxBlock;
}

// --- element conversions (values already brought into range by the block's factor) -----------

// Two e2m1 codes in one byte (a low, b high), round to nearest even, saturating to +-6; `software`:
// a block holding a NaN (microscaling.h's f32_to_e2m1, which encodes NaN as the spec does).
__device__ __forceinline__ uint32_t e2m1_pair(float a, float b, bool software) {
#if FK_HW_E2M1
  if (!software) {
    uint32_t r;
    asm("{ .reg .b8 q;\n"
        "  cvt.rn.satfinite.e2m1x2.f32 q, %2, %1;\n"
        "  cvt.u32.u8 %0, q; }"
        : "=r"(r)
        : "f"(a), "f"(b));
    return r;
  }
#endif
  // A block without a NaN: the finite conversion, in about half the instructions.
  if (!software) return (static_cast<uint32_t>(mx::f32_to_e2m1_finite(b)) << 4) | mx::f32_to_e2m1_finite(a);
  return (static_cast<uint32_t>(mx::f32_to_e2m1(b)) << 4) | mx::f32_to_e2m1(a);
}

#if !FK_HIP && !FK_HW_E2M1
// The packed e2m1 conversion of bf16 rows where the hardware has none (pairs, not NaN): per lane
// the steps of mx::e2m1_mag_bf16 (checked against the e2m1 model for every non-NaN float by
// .ci/mx_math.cpp), a pair of elements per instruction: three bf16 fmas, each rounding one
// piece of the code (128 + round(2a), 130 + round(a), 132 + round(a / 2)), and their minimum with
// 135. mx::pack_e2m1x8 then gathers four pairs' codes with their signs into the packed word.
#define FK_PACKED_E2M1 1
__device__ __forceinline__ bf162_t bf162_of(uint32_t u) {
  bf162_t v;
  __builtin_memcpy(&v, &u, sizeof(u));
  return v;
}
__device__ __forceinline__ uint32_t bits_of_pair(bf162_t v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
  return u;
}
// a: a pair of magnitudes (>= 0, not NaN; beyond 6 saturates). Each half: 0x4300 | its code.
__device__ __forceinline__ uint32_t e2m1x2_mag_bf16(bf162_t a) {
  const bf162_t r1 = __hfma2(a, bf162_of(0x40004000u), bf162_of(0x43004300u));  // 2a + 128
  const bf162_t r2 = __hfma2(a, bf162_of(0x3F803F80u), bf162_of(0x43024302u));  // a + 130
  const bf162_t r3 = __hfma2(a, bf162_of(0x3F003F00u), bf162_of(0x43044304u));  // a / 2 + 132
  return bits_of_pair(__hmin2(__hmin2(r1, r2), __hmin2(r3, bf162_of(0x43074307u))));  // <= 135
}

// Two fp32 values rounded to odd in bf16 (mx::f32_to_bf16_odd's steps), packed (lo, hi).
__device__ __forceinline__ uint32_t bf16x2_odd(float lo, float hi) {
  uint32_t a = __float_as_uint(lo), b = __float_as_uint(hi);
  a |= (a + 0xFFFFu) & 0x10000u;
  b |= (b + 0xFFFFu) & 0x10000u;
  return __byte_perm(a, b, 0x7632);
}

// A bf16 slot's packed FP4 codes (element 2i in the low nibble of byte i) for a block on the
// fast path (no NaN; NVFP4: a finite factor > 0). MXFP4: `mult` is a power of two, so the bf16
// products are exact (a product below 2^-126 may flush to zero: it is below 0.25 whenever the
// block's absmax is at least 2^-118, which the caller checks, and codes to 0 either way). NVFP4:
// the fp32 products (the spec's), rounded to odd in bf16. The signs are the unscaled values'
// (a product that flushes to zero keeps its element's sign).
template <int FMT, int V>
__device__ __forceinline__ uint32_t e2m1_word_bf16(const Pack<bf16_t, V>& y, float mult) {
  static_assert(V == 8, "a 16-byte slot of bf16");
  const uint32_t* y2 = reinterpret_cast<const uint32_t*>(y.v);
  const bf162_t m2 = __float2bfloat162_rn(mult);
  auto mag = [&](uint32_t pair) {  // the codes of a pair's products' magnitudes
    bf162_t a;
    if constexpr (FMT == kFmtMxfp4) {
      a = __hmul2(__habs2(bf162_of(pair)), m2);
    } else {
      // (the bf16 pair as floats: the low half shifted up, the high half masked)
      const float lo = __uint_as_float(pair << 16), hi = __uint_as_float(pair & 0xFFFF0000u);
      a = bf162_of(bf16x2_odd(fabsf(lo) * mult, fabsf(hi) * mult));
    }
    return e2m1x2_mag_bf16(a);
  };
  const uint32_t r[4] = {mag(y2[0]), mag(y2[1]), mag(y2[2]), mag(y2[3])};
  return mx::pack_e2m1x8(r, y2);
}
#else
#define FK_PACKED_E2M1 0
#endif

// Two fp8 bytes (a low, b high) of values clamped to the format's range: hardware on sm_89+
// unless `software` (a block holding a NaN: the spec keeps a NaN's sign).
template <int FMT>
__device__ __forceinline__ uint32_t fp8_pair(float a, float b, bool software) {
  constexpr float kMax = FMT == kFmtE4m3 ? mx::kE4m3Max : 57344.0f;
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if (!software) {
    uint16_t r;
    if constexpr (FMT == kFmtE4m3) {
      asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(r) : "f"(a), "f"(b));
    } else {
      asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(r) : "f"(a), "f"(b));
    }
    return r;
  }
#endif
  (void)software;
  a = mx::clamp_keep_nan(a, -kMax, kMax);
  b = mx::clamp_keep_nan(b, -kMax, kMax);
  if constexpr (FMT == kFmtE4m3) {
    return mx::f32_to_e4m3fn(a) | (static_cast<uint32_t>(mx::f32_to_e4m3fn(b)) << 8);
  } else {
    return mx::f32_to_e5m2(a) | (static_cast<uint32_t>(mx::f32_to_e5m2(b)) << 8);
  }
}

// --- NVFP4 block scales ----------------------------------------------------------------------

// The global scale as the kernels hold it: g and its IEEE reciprocal 1 / g (Inf for 0), computed
// once per thread instead of once per block.
struct Nvfp4Global {
  float g;
  float recip;
};

// The scale's e4m3 conversions for mx::nvfp4_block_with: cvt.rn.satfinite.e4m3x2.f32 and
// cvt.rn.f16x2.e4m3x2 on sm_89+ (the bytes and values of mx::f32_to_e4m3fn / e4m3fn_to_f32:
// every e4m3 value is an f16, so the decode is exact), but for a NaN, whose sign only the software
// keeps (encode), and the NaN bytes 0x7F / 0xFF (decode).
struct E4m3Hw {
  __host__ __device__ uint8_t encode(float v) const {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if (v == v) {
      uint16_t r;  // (the operand converted into the low byte is the last)
      asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(v));
      return static_cast<uint8_t>(r);
    }
#endif
    return mx::f32_to_e4m3fn(v);
  }
  __host__ __device__ float decode(uint8_t byte) const {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if ((byte & 0x7Fu) != 0x7Fu) {
      float f;
      asm("{ .reg .b32 h2;\n"
          "  .reg .b16 lo, hi;\n"
          "  cvt.rn.f16x2.e4m3x2 h2, %1;\n"
          "  mov.b32 {lo, hi}, h2;\n"
          "  cvt.f32.f16 %0, lo; }"
          : "=f"(f)
          : "h"(static_cast<uint16_t>(byte)));
      return f;
    }
#endif
    return mx::e4m3fn_to_f32(byte);
  }
};

// mx::nvfp4_block as the kernels run it: 1 / g from `gs` (computed once per thread) and the
// scale's e4m3 conversions in hardware.
__device__ __forceinline__ mx::Nvfp4Block nvfp4_block(float amax, const Nvfp4Global& gs, bool multiplier) {
  return mx::nvfp4_block_with(amax, gs.g, gs.recip, multiplier, E4m3Hw{});
}

// x / d for a block divisor d = 2^k (k in [-126, 127]) or +Inf (the floor/ceil/even modes'
// mx_block_factor), as a product with 1 / d, which is exact (2^-127 is a subnormal float): the
// same correctly rounded quotient without a division per element. A NaN x stays x (its sign kept,
// as the spec's division keeps it).
struct BlockDivisor {
  float recip;
  __device__ explicit BlockDivisor(float d) {
    const uint32_t e = mx::bits_of(d) >> 23;  // d > 0: 1..254, or 255 for +Inf
    recip = e == 255 ? 0.0f : (e == 254 ? mx::float_of(0x00400000u) : mx::float_of((254u - e) << 23));
  }
  __device__ float apply(float x) const { return x != x ? x : x * recip; }
};

// A slot's V values as floats.
template <typename T, int V>
__device__ __forceinline__ void to_floats(const Pack<T, V>& y, float (&f)[V]) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* y2 = reinterpret_cast<const P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 g = to_float2(y2[p]);
      f[2 * p] = g.x;
      f[2 * p + 1] = g.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = y.v[k];
  }
}

// The sign bits of a slot's values (bit k: value k), from their encoding: a NaN's sign, which
// the GPU's float arithmetic and 16-bit conversions do not keep, is the spec's there.
template <typename T, int V>
__device__ __forceinline__ uint32_t sign_bits(const Pack<T, V>& y) {
  uint32_t s = 0;
  if constexpr (kIs16<T>) {
    const uint16_t* b = reinterpret_cast<const uint16_t*>(y.v);
#pragma unroll
    for (int k = 0; k < V; ++k) s |= static_cast<uint32_t>(b[k] >> 15) << k;
  } else {
    const uint32_t* b = reinterpret_cast<const uint32_t*>(y.v);
#pragma unroll
    for (int k = 0; k < V; ++k) s |= (b[k] >> 31) << k;
  }
  return s;
}

__device__ __forceinline__ bool nan_bits(float v) { return (mx::bits_of(v) & 0x7FFFFFFFu) > 0x7F800000u; }

}  // namespace dev
}  // namespace fusion_kernels
