// SPDX-License-Identifier: Apache-2.0
// The dynamic scale rule (ScaleRule, row_op.h), the one implementation that the CPU and the
// CUDA/HIP kernels share (the spec: fusion_kernels/reference.py, dynamic_scale). Every dynamic
// scale of every op goes through dynamic_scale(): the per-token and per-token-group ops with
// their fixed rules (per_token_rule, group_rule), the rule ops with the rule given as arguments.
//
// Each device brings its arithmetic as a class `Arith` with two static functions and a flag:
//   div(a, rule)        a / rule.divisor correctly rounded (to nearest even), for a >= +0 or NaN;
//   round_to(s, dtype)  s rounded to kBFloat16 or kFloat16 (to nearest even) and back to float;
//   kSubnormalScales    whether a scale may be subnormal (UE8M0 then handles subnormals).
// Raw floats only: no torch, no device intrinsics other than bit manipulation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "row_op.h"

// Device functions in the CUDA/HIP translation units (which use them only in kernels), inline
// host functions in the C++ ones.
#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__HIP__)
#define FK_SCALE_DEVICE 1
#define FK_SCALE_FN __device__ __forceinline__
#else
#define FK_SCALE_DEVICE 0
#define FK_SCALE_FN inline
#endif

namespace fusion_kernels {

FK_SCALE_FN uint32_t scale_bits(float v) {
#if FK_SCALE_DEVICE
  return __float_as_uint(v);
#else
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
#endif
}

FK_SCALE_FN float scale_from_bits(uint32_t b) {
#if FK_SCALE_DEVICE
  return __uint_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
#endif
}

FK_SCALE_FN int scale_clz(uint32_t v) {
#if FK_SCALE_DEVICE
  return __clz(static_cast<int>(v));
#else
  return __builtin_clz(v);
#endif
}

// A positive finite scale rounded up to a power of two, exactly (no log2 rounding); 0, Inf and
// NaN unchanged. SUBNORMAL: a subnormal rounds up to the next subnormal or normal power of two
// (false where scales cannot be subnormal: the fixed rules' floors keep them above 2^-126).
template <bool SUBNORMAL = true>
FK_SCALE_FN float ue8m0_ceil(float s) {
  if (!(s > 0.0f) || s == INFINITY) return s;
  uint32_t b = scale_bits(s);
  if constexpr (SUBNORMAL) {
    if ((b & 0x7F800000u) == 0) {  // the power of two at or above the mantissa bits
      if (b & (b - 1)) b = 1u << (32 - scale_clz(b));
      return scale_from_bits(b);
    }
  }
  if (b & 0x007FFFFFu) b = (b & 0xFF800000u) + 0x00800000u;
  return scale_from_bits(b);
}

// The rule, in the spec's order. A step whose parameter is 0 (or float32, or false) is the
// identity and is skipped; where the rule is a compile-time constant (the GPU's fixed-rule
// kernels) those steps vanish and what is left is the fixed rule's own arithmetic. NaN passes
// every step (it compares false). Arith::kSubnormalScales: whether scales may be subnormal.
template <typename Arith>
FK_SCALE_FN float dynamic_scale(float amax, const ScaleRule& r) {
  float a = amax;
  if (r.absmax_floor > 0.0f) a = a < r.absmax_floor ? r.absmax_floor : a;
  float s = Arith::div(a, r);
  if (r.scale_dtype != DType::kFloat32) s = Arith::round_to(s, r.scale_dtype);
  if (r.ue8m0) s = ue8m0_ceil<Arith::kSubnormalScales>(s);
  if (r.scale_floor > 0.0f) s = s < r.scale_floor ? r.scale_floor : s;
  if (r.zero_scale > 0.0f) s = s == 0.0f ? r.zero_scale : s;
  return s;
}

// Group g's scale of row `row` in the padded layouts: the fp32 scales whose columns hold
// `padded_rows` rows, or the UE8M0 bytes packed four groups to an int32 (RowOpParams::
// packed_ue8m0_scales; `scales` then points at the int32s, `col_stride` is the padded row count).
// The writer of the last row also zeroes its group's padding rows, and in the packed layout the
// writer of a row's last group zeroes the unused bytes of its int32, so every byte of the scales
// tensor's storage is written. Out of line on the GPU: inlined at each of a kernel's unrolled
// scale stores it doubled the group kernels' compile time, and it runs once per group at most.
// (`inline` for the one-definition rule only: every translation unit that includes this header
// emits it, and __noinline__ keeps the device code a call.)
#if FK_SCALE_DEVICE
__device__ __noinline__
#endif
inline void store_group_scale_padded(float* scales, int64_t row_stride, int64_t col_stride, int64_t rows,
                                     int64_t padded_rows, int64_t groups, bool packed, int64_t row, int64_t g, float s) {
  if (!packed) {
    scales[row * row_stride + g * col_stride] = s;
    if (row == rows - 1)
      for (int64_t r = rows; r < padded_rows; ++r) scales[r * row_stride + g * col_stride] = 0.0f;
    return;
  }
  uint8_t* const base = reinterpret_cast<uint8_t*>(scales);
  const uint8_t e = static_cast<uint8_t>(scale_bits(s) >> 23);  // (the sign bit shifted out)
  const int64_t col = (g >> 2) * col_stride;
  const int first_unused = g == groups - 1 ? static_cast<int>(g & 3) + 1 : 4;
  const int64_t end = row == rows - 1 ? col_stride : row + 1;
  for (int64_t r = row; r < end; ++r) {
    uint8_t* const word = base + ((col + r) << 2);
    word[g & 3] = r == row ? e : uint8_t{0};
    for (int b = first_unused; b < 4; ++b) word[b] = 0;
  }
}

// Group g's scale of row `row`, stored as the layout asks: fp32 at [row, g] of the strided
// scales (inline), or one of the padded layouts (store_group_scale_padded).
FK_SCALE_FN void store_group_scale(const RowOpParams& p, int64_t row, int64_t g, float s) {
  if (!p.packed_ue8m0_scales && (row != p.rows - 1 || p.scale_padded_rows <= p.rows)) {
    p.scales[row * p.scale_row_stride + g * p.scale_group_stride] = s;
    return;
  }
  store_group_scale_padded(p.scales, p.scale_row_stride, p.scale_group_stride, p.rows, p.scale_padded_rows,
                           p.hidden / p.group_size, p.packed_ue8m0_scales, row, g, s);
}

}  // namespace fusion_kernels
