// SPDX-License-Identifier: Apache-2.0
// The quantizers: per output type (QuantTraits) the range and the saturating conversion of four
// values, the quantization of a slot (y * (1 / scale)), and the scale arithmetic (a / qmax
// correctly rounded, the ue8m0 rounding of group scales, the per-token scale).
#pragma once

#include "cuda/compat.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"
#include "row_op.h"

namespace fusion_kernels {
namespace dev {

enum class OutKind { kPlain, kE4m3fn, kE4m3fnuz, kInt8 };

template <OutKind OUT>
struct QuantTraits;
template <>
struct QuantTraits<OutKind::kE4m3fn> {
  static constexpr float kMax = kFp8E4m3fnMax;
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_e4m3fn_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kE4m3fnuz> {
  static constexpr float kMax = kFp8E4m3fnuzMax;
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_e4m3fnuz_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kInt8> {
  static constexpr float kMax = kInt8Max;
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_int8_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kPlain> {
  static constexpr float kMax = 0.0f;
  __device__ static uint32_t convert4(float, float, float, float) { return 0; }
};

template <OutKind OUT, typename T, int V>
__device__ __forceinline__ Pack<uint8_t, V> quantize(const Pack<T, V>& y, float inv_scale) {
  static_assert(V % 4 == 0, "a slot quantizes into whole 32-bit words");
  float f[V];
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* y2 = reinterpret_cast<const P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 g = to_float2(y2[p]);
      f[2 * p] = g.x * inv_scale;
      f[2 * p + 1] = g.y * inv_scale;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = y.v[k] * inv_scale;
  }
  Pack<uint8_t, V> q;
  uint32_t* q4 = reinterpret_cast<uint32_t*>(q.v);
#pragma unroll
  for (int k = 0; k < V / 4; ++k) q4[k] = QuantTraits<OUT>::convert4(f[4 * k], f[4 * k + 1], f[4 * k + 2], f[4 * k + 3]);
  return q;
}

__device__ __forceinline__ float ue8m0_ceil(float s) {
  // Round a positive finite scale up to a power of two, exactly.
  if (!(s > 0.0f) || s == INFINITY) return s;
  unsigned bits = __float_as_uint(s);
  if (bits & 0x007FFFFFu) bits = (bits & 0xFF800000u) + 0x00800000u;
  return __uint_as_float(bits);
}

// a / qmax, correctly rounded, for the scales (a >= kGroupAbsmaxFloor, +Inf or NaN): the
// product with the rounded reciprocal is within an ulp of the quotient, and one fma correction
// step (Markstein) rounds it correctly; checked against div.rn for every such float.
template <OutKind OUT>
__device__ __forceinline__ float div_by_qmax(float a) {
#if FK_FAST_SCALE_DIV
  constexpr float c = QuantTraits<OUT>::kMax;
  constexpr float y = 1.0f / c;
  const float q = __fmul_rn(a, y);
  const float r = fmaf(-q, c, a);
  const float q1 = fmaf(r, y, q);
  return a == INFINITY ? a : q1;
#else
  return __fdiv_rn(a, QuantTraits<OUT>::kMax);
#endif
}

// The per-token scale of a row from its absmax: the absmax clamped to the optional upper bound
// p.scale_ub, divided by qmax, and floored at 1 / (qmax * kPerTokenMinScaleFactor).
template <OutKind OUT>
__device__ __forceinline__ float per_token_scale(float amax, const RowOpParams& p) {
  constexpr float qmax = QuantTraits<OUT>::kMax;
  const float ub = p.scale_ub != nullptr ? *p.scale_ub : 0.0f;
  const float a = (p.scale_ub != nullptr && amax > ub) ? ub : amax;
  constexpr float min_scale = 1.0f / (qmax * kPerTokenMinScaleFactor);  // qmax * 512 is exact
  // a / qmax is exact-rounded by div_by_qmax for a >= 1e-10; below that the quotient is far
  // under min_scale either way. The scale is then within rcp_scale's range (or Inf / NaN).
  float scale = div_by_qmax<OUT>(a);
  return scale < min_scale ? min_scale : scale;
}

}  // namespace dev
}  // namespace fusion_kernels
