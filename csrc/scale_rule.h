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

// Group g's scale of row `row`, stored as the layout asks: fp32 at [row, g] of the strided
// scales (the padded fp32 layout too: its columns hold scale_padded_rows rows), or its UE8M0 byte
// in the packed layout (RowOpParams::packed_ue8m0_scales; `scales` then points at the int32s,
// four groups to one, and scale_group_stride is the padded row count). One store, inline at each
// of a kernel's unrolled scale stores; the bytes that hold no group's scale are written once per
// row by zero_group_scale_padding.
FK_SCALE_FN void store_group_scale(const RowOpParams& p, int64_t row, int64_t g, float s) {
  if (!p.packed_ue8m0_scales) {
    p.scales[row * p.scale_row_stride + g * p.scale_group_stride] = s;
    return;
  }
  uint8_t* const base = reinterpret_cast<uint8_t*>(p.scales);
  base[(((g >> 2) * p.scale_group_stride + row) << 2) + (g & 3)] = static_cast<uint8_t>(scale_bits(s) >> 23);
}

// The padding of the padded scale layouts that belongs to row `row` (valid), so that every byte
// of the scales tensor's storage is written: in the packed layout the unused bytes of the row's
// last int32 (a group count that is not a multiple of 4); for the last row also the padding rows
// rows..padded - 1 of every scale column (zeros). Work items first, first + step, ...: the GPU
// kernels spread them over the threads of the row, once per row (not at each unrolled scale
// store, which kept the group kernels' compile time and registers as they were without padding).
FK_SCALE_FN void zero_group_scale_padding(const RowOpParams& p, int64_t row, int first, int step) {
  const int64_t groups = p.hidden / p.group_size;
  if (p.packed_ue8m0_scales) {
    const int64_t words = (groups + 3) >> 2;
    const int64_t padded = p.scale_group_stride;
    uint8_t* const base = reinterpret_cast<uint8_t*>(p.scales);
    if ((groups & 3) != 0 && first == 0)
      for (int64_t b = groups & 3; b < 4; ++b) base[(((words - 1) * padded + row) << 2) + b] = 0;
    if (row != p.rows - 1) return;
    int32_t* const w = reinterpret_cast<int32_t*>(p.scales);
    for (int64_t k = first; k < (padded - p.rows) * words; k += step) w[(k % words) * padded + p.rows + k / words] = 0;
    return;
  }
  if (row != p.rows - 1) return;
  for (int64_t k = first; k < (p.scale_padded_rows - p.rows) * groups; k += step)
    p.scales[(p.rows + k / groups) * p.scale_row_stride + (k % groups) * p.scale_group_stride] = 0.0f;
}

}  // namespace fusion_kernels
