// SPDX-License-Identifier: Apache-2.0
// The microscaling (block-scaled) formats on raw floats: MXFP8, MXFP4 (E8M0 block scales) and
// NVFP4 (E4M3 block scales and an fp32 global scale). No torch: bit-level conversions that the
// CPU kernels (cpu/mx_cpu.cpp) use and the GPU kernels can share. The spec, bit for bit, is
// fusion_kernels/microscaling.py (kernels/microscaling.py); each function names its counterpart.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FK_MX_HD __host__ __device__
#else
#define FK_MX_HD
#endif

namespace fusion_kernels {
namespace mx {

constexpr int kMxBlock = 32;  // MXFP8 / MXFP4 elements per E8M0 scale
constexpr int kNvfp4Block = 16;  // NVFP4 elements per E4M3 scale
constexpr float kE2m1Max = 6.0f;
constexpr float kE4m3Max = 448.0f;
constexpr float kE4m3MinNormal = 0x1p-6f;  // lower clamp of the NVFP4 "divisor" block scales
constexpr float kF32MinNormal = 0x1p-126f;  // lower clamp of the divisor in floor/ceil/even
constexpr float kF32Max = 0x1.fffffep127f;
constexpr uint8_t kE8m0Nan = 255;

// How an E8M0 block scale follows from the block's absmax (microscaling.mx_block_scale; torchao's
// ScaleCalculationMode). The ops take it as a string; these are its values.
enum class ScaleMode : int32_t { kFloor = 0, kRceil = 1, kCeil = 2, kEven = 3 };

// The element formats of the E8M0-scaled blocks.
enum class ElemFormat : int32_t { kE4m3, kE5m2, kE2m1 };

struct ElemInfo {
  float qmax;  // largest value: 448, 57344, 6
  int32_t pow2;  // floor(log2(qmax)): 8, 15, 2
  int32_t mbits;  // mantissa bits: 3, 2, 1
};

FK_MX_HD inline ElemInfo elem_info(ElemFormat f) {
  switch (f) {
    case ElemFormat::kE4m3: return {448.0f, 8, 3};
    case ElemFormat::kE5m2: return {57344.0f, 15, 2};
    default: return {6.0f, 2, 1};
  }
}

FK_MX_HD inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

FK_MX_HD inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

FK_MX_HD inline bool is_nan(float v) { return v != v; }

// NaN-propagating max and clamp (std::min/std::max would drop a NaN operand).
FK_MX_HD inline float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }
FK_MX_HD inline float clamp_keep_nan(float v, float lo, float hi) { return v > hi ? hi : (v < lo ? lo : v); }

// x * r for a block factor r: a NaN r (the factor of a block holding a NaN) gives r's NaN for
// every element, NaN elements included; else the IEEE product. This is what the reference's
// torch product gives on the CPU (checked: a NaN element of such a block comes out as r's
// positive NaN); a plain x * r leaves it to the compiler's operand order which NaN comes out.
FK_MX_HD inline float mul_by_factor(float x, float r) { return is_nan(r) ? r : x * r; }

// --- FP4 e2m1 ----------------------------------------------------------------------------------

// The e2m1 code (0..15, sign in bit 3) of x: round to nearest even, saturating to +-6; NaN gives
// 7 with NaN's sign (microscaling.f32_to_e2m1, the model of cvt.rn.satfinite.e2m1x2.f32).
FK_MX_HD inline uint8_t f32_to_e2m1(float x) {
  const uint32_t bits = bits_of(x);
  const uint32_t sign = (bits >> 28) & 8u;
  const int32_t mag = static_cast<int32_t>(bits & 0x7FFFFFFFu);
  const int32_t e = mag >> 23;
  int32_t shift = 149 - e;
  shift = shift < 22 ? 22 : (shift > 30 ? 30 : shift);
  const int32_t sig = (mag & 0x7FFFFF) | 0x800000;
  const int32_t n = (sig + ((1 << shift) >> 1) - 1 + ((sig >> shift) & 1)) >> shift;
  int32_t code = n + 2 * (e > 127 ? e - 127 : 0);
  if (code > 7) code = 7;
  return static_cast<uint8_t>(static_cast<uint32_t>(code) | sign);
}

// f32_to_e2m1 of a finite x (a NaN gives another code: the kernels convert the elements of a
// block holding a NaN with f32_to_e2m1), in fewer instructions: |x| clamped to 6; below 1 the
// code is 2|x| rounded to the nearest integer, ties to even (0, 1 or 2), by adding 1.5 * 2^23 in
// one fma (whose single rounding is at the integers there); from 1 on it is the fp32 encoding
// rounded to one mantissa bit, ties to even (adding 2^21 - 1 and the kept bit carries into the
// exponent as the rounding requires), rebased from 1.0's exponent to code 2.
FK_MX_HD inline uint8_t f32_to_e2m1_finite(float x) {
  const uint32_t sign = (bits_of(x) >> 28) & 8u;
  float a = float_of(bits_of(x) & 0x7FFFFFFFu);
  a = a > kE2m1Max ? kE2m1Max : a;
  const uint32_t small = bits_of(std::fma(a, 2.0f, 12582912.0f)) & 3u;
  const uint32_t u = bits_of(a);
  const uint32_t big = ((u + 0x1FFFFFu + ((u >> 22) & 1u)) >> 22) - 0xFCu;
  return static_cast<uint8_t>((a < 1.0f ? small : big) | sign);
}

// --- e2m1 from bf16 (the GPU kernels' conversion of 16-bit rows, a pair per instruction) ------

// x rounded to bf16 toward zero with the discarded bits' "or" in the last kept bit (round to
// odd): bf16 keeps 8 significant bits, at least two more than e2m1's rounding needs anywhere, so
// rounding this to e2m1 (to nearest even) gives what rounding x does (no double rounding).
// (As the GPU computes it, two instructions: u + 0xFFFF carries into bit 16, flipping it, exactly
// when bits 0-15 are not all zero, so its bit 16 or-ed into u sets the last kept bit then, and
// leaves it as it was otherwise.)
FK_MX_HD inline uint16_t f32_to_bf16_odd(float x) {
  const uint32_t u = bits_of(x);
  return static_cast<uint16_t>((u | ((u + 0xFFFFu) & 0x10000u)) >> 16);
}

// A bf16 value rounded once to nearest even from fp32 (bits; Inf stays Inf).
FK_MX_HD inline uint32_t bf16_bits_rn(float v) {
  const uint32_t u = bits_of(v);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

// The e2m1 magnitude of a >= 0 (not NaN; beyond 6, Inf included, saturating) as the GPU's packed
// conversion (dev::e2m1x2_mag_bf16) computes each lane: the bf16 encoding of 128 + code. The code
// is round(min(2a, a + 2, a / 2 + 4)) capped at 7, each candidate a bf16 fma whose one rounding
// lands in [128, 256), where bf16's spacing is 1: 128 + round(2a) (a < 2: steps of 1/2),
// 130 + round(a) (a in [2, 4): steps of 1), 132 + round(a / 2) (a >= 4: steps of 2), and 135. The
// rounding is monotone, so the rounded minimum is the minimum of the rounded candidates (ties to
// the even integer, whose parity is the code's). Here the fmas are fp32's, exact wherever the bf16
// rounding is not already decided (terms >= 2^-9), then rounded to bf16; the encodings compare as
// the values do (all positive). The result is 0x4300 | code: the code is its low byte.
FK_MX_HD inline uint32_t e2m1_mag_bf16(float a) {
  const uint32_t r1 = bf16_bits_rn(std::fma(a, 2.0f, 128.0f));
  const uint32_t r2 = bf16_bits_rn(std::fma(a, 1.0f, 130.0f));
  const uint32_t r3 = bf16_bits_rn(std::fma(a, 0.5f, 132.0f));
  const uint32_t m12 = r1 < r2 ? r1 : r2;
  const uint32_t m3 = r3 < 0x4307u ? r3 : 0x4307u;
  return m12 < m3 ? m12 : m3;
}

// f32_to_e2m1 of a bf16 encoding s (not NaN), step for step as the GPU's packed conversion
// computes it: the magnitude's code (e2m1_mag_bf16 of |s|) and the sign bit of s.
FK_MX_HD inline uint8_t e2m1_of_bf16(uint16_t s) {
  const uint32_t sign = (static_cast<uint32_t>(s) >> 12) & 8u;
  const float a = float_of(static_cast<uint32_t>(s & 0x7FFFu) << 16);
  return static_cast<uint8_t>((e2m1_mag_bf16(a) & 7u) | sign);
}

// prmt.b32 (its default mode) on the device, and the same on the host: byte n of the result is
// byte (SEL >> 4n) & 7 of the eight bytes b:a (a's bytes 0-3), or, where bit 3 of that nibble is
// set, that byte's bit 7 copied into all eight bits.
template <uint32_t SEL>
FK_MX_HD inline uint32_t prmt(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "n"(SEL));
  return r;
#else
  const uint64_t src = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) {
    const uint32_t nib = (SEL >> (4 * n)) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(src >> (8 * (nib & 7u))) & 0xFFu;
    if (nib & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    r |= byte << (8 * n);
  }
  return r;
#endif
}

// Four FP4 codes with their signs, from two pairs of magnitudes r0, r1 (each half 0x4300 | code,
// as e2m1_mag_bf16 gives them) and the two source pairs y0, y1 whose sign bits (15 and 31) are
// the codes' signs: the code bytes gathered, the signs (a byte of 0xFF per negative element) in
// as bit 3, then each byte's neighbour added as its high nibble. Bytes 0 and 2 hold the result
// (elements 0 | 1 << 4 and 2 | 3 << 4).
FK_MX_HD inline uint32_t fold_e2m1x4(uint32_t r0, uint32_t r1, uint32_t y0, uint32_t y1) {
  const uint32_t v = prmt<0x6420u>(r0, r1) | (prmt<0xFDB9u>(y0, y1) & 0x08080808u);
  return v + (v >> 4);  // (an "or": the shifted nibbles land on the high nibbles, which are zero)
}

// Eight FP4 codes, element 2i in the low nibble of byte i, from four pairs of magnitudes and the
// four source pairs (fold_e2m1x4 of each half).
FK_MX_HD inline uint32_t pack_e2m1x8(const uint32_t* r, const uint32_t* y) {
  return prmt<0x6420u>(fold_e2m1x4(r[0], r[1], y[0], y[1]), fold_e2m1x4(r[2], r[3], y[2], y[3]));
}

// --- E8M0 --------------------------------------------------------------------------------------

// The float of an E8M0 byte: 2^(byte - 127); byte 0 is the fp32 subnormal 2^-127, 255 is NaN
// (microscaling.e8m0_to_f32).
FK_MX_HD inline float e8m0_to_f32(uint8_t byte) {
  if (byte == 0) return float_of(0x00400000u);
  if (byte == kE8m0Nan) return float_of(0x7FC00000u);
  return float_of(static_cast<uint32_t>(byte) << 23);
}

// The E8M0 byte of a non-negative float (or NaN) rounded up to a power of two, saturating
// (microscaling.f32_to_ue8m0, the model of cvt.rp.satfinite.ue8m0x2.f32). The sign bit is ignored.
FK_MX_HD inline uint8_t f32_to_ue8m0_rp(float x) {
  const uint32_t mag = bits_of(x) & 0x7FFFFFFFu;
  if (mag > 0x7F800000u) return kE8m0Nan;
  const uint32_t e = mag >> 23;
  const uint32_t m = mag & 0x7FFFFFu;
  const uint32_t byte = e == 0 ? (m > 0x400000u ? 1u : 0u) : e + (m != 0 ? 1u : 0u);
  return static_cast<uint8_t>(byte > 254u ? 254u : byte);
}

// The E8M0 scale byte of a block whose absmax (>= 0 or NaN) is `amax` (microscaling.mx_block_scale).
FK_MX_HD inline uint8_t mx_block_scale(float amax, ElemFormat elem, ScaleMode mode) {
  if (is_nan(amax)) return kE8m0Nan;
  const ElemInfo info = elem_info(elem);
  if (mode == ScaleMode::kRceil) return f32_to_ue8m0_rp(amax / info.qmax);
  uint32_t bits = bits_of(amax);
  if (mode == ScaleMode::kEven) bits = (bits + (1u << (22 - info.mbits))) & 0x7F800000u;
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xFFu);
  if (mode == ScaleMode::kCeil) e += (bits & 0x7FFFFFu) != 0 ? 1 : 0;
  int32_t byte = e - info.pow2;
  byte = byte < 0 ? 0 : (byte > 254 ? 254 : byte);
  return static_cast<uint8_t>(byte);
}

// What a block's elements are multiplied by (rceil) or divided by (the other modes) - see
// mx_scaled. rceil: 2^(127 - byte), exact; byte 0 gives 1 and 255 NaN. Others: the divisor
// max(2^(byte - 127), 2^-126); byte 255 gives +Inf.
FK_MX_HD inline float mx_block_factor(uint8_t byte, ScaleMode mode) {
  if (mode == ScaleMode::kRceil) {
    if (byte == kE8m0Nan) return float_of(0x7FC00000u);
    if (byte == 0) return 1.0f;
    return e8m0_to_f32(static_cast<uint8_t>(254 - byte));
  }
  const float divisor = float_of(static_cast<uint32_t>(byte) << 23);
  return divisor < kF32MinNormal ? kF32MinNormal : divisor;
}

// x brought into the element range by its block's factor (microscaling._mx_scaled).
FK_MX_HD inline float mx_scaled(float x, float factor, ScaleMode mode) {
  return mode == ScaleMode::kRceil ? mul_by_factor(x, factor) : x / factor;
}

// --- E4M3 (the NVFP4 block scales) -------------------------------------------------------------

// float8_e4m3fn of x, round to nearest even; finite values beyond the range and +-Inf saturate
// to +-448, NaN gives 0x7F with NaN's sign (as torch's conversion and cvt.rn.satfinite.e4m3x2).
FK_MX_HD inline uint8_t f32_to_e4m3fn(float f) {
  constexpr uint32_t kFirstOutOfRange = UINT32_C(1087) << 20;  // 480.0f
  constexpr uint32_t kDenormMask = UINT32_C(141) << 23;
  uint32_t f_bits = bits_of(f);
  const uint32_t sign = f_bits & 0x80000000u;
  f_bits ^= sign;
  uint8_t result;
  if (f_bits >= kFirstOutOfRange) {
    result = f_bits > 0x7F800000u ? 0x7F : 0x7E;
  } else if (f_bits < (UINT32_C(121) << 23)) {  // below 2^-6: the e4m3 subnormals
    f_bits = bits_of(float_of(f_bits) + float_of(kDenormMask));
    result = static_cast<uint8_t>(f_bits - kDenormMask);
  } else {
    const uint32_t mant_odd = (f_bits >> 20) & 1u;
    f_bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu;
    f_bits += mant_odd;
    result = static_cast<uint8_t>(f_bits >> 20);
    if (result == 0x7F) result = 0x7E;
  }
  return static_cast<uint8_t>(result | (sign >> 24));
}

// float8_e5m2 of x, round to nearest even; |x| from 2^16 up (Inf included) gives +-Inf, NaN
// gives 0x7F with NaN's sign (torch's conversion). The MXFP8 kernels clamp to +-57344 first.
FK_MX_HD inline uint8_t f32_to_e5m2(float f) {
  uint32_t f_bits = bits_of(f);
  const uint32_t sign = f_bits & 0x80000000u;
  f_bits ^= sign;
  uint8_t result;
  if (f_bits >= (UINT32_C(143) << 23)) {  // 2^16: beyond the largest finite value's rounding range
    result = f_bits > 0x7F800000u ? 0x7F : 0x7C;
  } else if (f_bits < (UINT32_C(113) << 23)) {  // below 2^-14: the e5m2 subnormals, by an
    // exact-alignment add (the sum's low mantissa bits are the rounded subnormal)
    constexpr uint32_t kAlign = UINT32_C(134) << 23;
    result = static_cast<uint8_t>(bits_of(float_of(f_bits) + float_of(kAlign)) - kAlign);
  } else {
    // rebias 127 -> 15 and round the 23-bit mantissa to 2 bits, ties to even
    const uint32_t odd = (f_bits >> 21) & 1u;
    f_bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFFFu + odd;
    result = static_cast<uint8_t>(f_bits >> 21);
  }
  return static_cast<uint8_t>(result | (sign >> 24));
}

// The float of a float8_e4m3fn byte (0x7F / 0xFF: NaN).
FK_MX_HD inline float e4m3fn_to_f32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80) << 24;
  const uint32_t e = (b >> 3) & 0xF;
  const uint32_t m = b & 0x7;
  if (e == 0xF && m == 0x7) return float_of(sign | 0x7FC00000u);
  if (e == 0) {
    // m * 2^-9, exact in fp32
    const float v = static_cast<float>(m) * 0x1p-9f;
    return sign ? -v : v;
  }
  return float_of(sign | ((e + 120u) << 23) | (m << 20));
}

// --- NVFP4 -------------------------------------------------------------------------------------

// The e4m3 scale byte of a block with absmax `amax` and the factor its elements are multiplied
// by before the e2m1 conversion (microscaling.nvfp4_quantize), given the global scale `g`:
//   divisor (torchao):   s = e4m3(clamp((amax / 6) / g, 2^-6, 448)), r = (1 / g) / s
//   multiplier (vLLM):   s = e4m3(min(g * (amax * fp32(1/6)), 448)),
//                        r = 1 / (s * (1 / g))   (1 / g taken as 0 where g is 0; r 0 where the
//                        product is 0)
struct Nvfp4Block {
  uint8_t scale;
  float factor;
};

// The scale's e4m3 conversions, in software (the GPU kernels pass the hardware's where there is
// one, dev::E4m3Hw).
struct E4m3Soft {
  FK_MX_HD uint8_t encode(float v) const { return f32_to_e4m3fn(v); }
  FK_MX_HD float decode(uint8_t byte) const { return e4m3fn_to_f32(byte); }
};

// nvfp4_block's steps with 1 / g given (`recip_g`, the IEEE quotient, which a kernel computes
// once) and the e4m3 conversions of `conv`.
template <typename Conv>
FK_MX_HD inline Nvfp4Block nvfp4_block_with(float amax, float g, float recip_g, bool multiplier, const Conv& conv) {
  Nvfp4Block b;
  if (!multiplier) {
    const float block = (amax / kE2m1Max) / g;
    b.scale = conv.encode(clamp_keep_nan(block, kE4m3MinNormal, kE4m3Max));
    b.factor = recip_g / conv.decode(b.scale);
  } else {
    constexpr float kInv6 = static_cast<float>(1.0 / 6.0);
    float v = g * (amax * kInv6);
    if (v > kE4m3Max) v = kE4m3Max;
    b.scale = conv.encode(v);
    const float inv_g = g == 0.0f ? 0.0f : recip_g;
    const float d = conv.decode(b.scale) * inv_g;
    b.factor = d == 0.0f ? 0.0f : 1.0f / d;
  }
  return b;
}

FK_MX_HD inline Nvfp4Block nvfp4_block(float amax, float g, bool multiplier) {
  return nvfp4_block_with(amax, g, 1.0f / g, multiplier, E4m3Soft{});
}

// --- the 128x4 swizzled scale layout -----------------------------------------------------------

// The byte offset of scale [r, c] of a [rows, cols] scale matrix in the 128x4 tile layout of
// block-scaled GEMMs (microscaling.swizzle_scales_128x4); col_tiles = ceil(cols / 4).
FK_MX_HD inline int64_t swizzled_offset(int64_t r, int64_t c, int64_t col_tiles) {
  return 512 * ((r / 128) * col_tiles + c / 4) + 16 * (r % 32) + 4 * ((r % 128) / 32) + c % 4;
}

}  // namespace mx
}  // namespace fusion_kernels
