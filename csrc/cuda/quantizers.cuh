// SPDX-License-Identifier: Apache-2.0
// The quantizers: per output type (QuantTraits) the range and the saturating conversion of four
// values, the quantization of a slot (y * (1 / scale)), and the GPU's side of the scale rule
// (scale_rule.h): the division, the scale's reciprocal, the rule of each kernel instantiation.
#pragma once

#include "cuda/compat.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"
#include "row_op.h"
#include "scale_rule.h"

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

// A slot quantized: y * inv_scale, rounded to T first where `round_quotient` (the rule ops'
// ScaleRule::round_quotient; the fixed-rule kernels pass a constant false), then the cast.
template <OutKind OUT, typename T, int V>
__device__ __forceinline__ Pack<uint8_t, V> quantize(const Pack<T, V>& y, float inv_scale, bool round_quotient = false) {
  static_assert(V % 4 == 0, "a slot quantizes into whole 32-bit words");
  float f[V];
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* y2 = reinterpret_cast<const P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      float2 g = to_float2(y2[p]);
      g.x *= inv_scale;
      g.y *= inv_scale;
      if (round_quotient) g = to_float2(from_float2<P>(g));
      f[2 * p] = g.x;
      f[2 * p + 1] = g.y;
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

// a / rule.divisor correctly rounded, for any a >= +0 (Inf and NaN included) and any divisor,
// in float and integer arithmetic: div.rn's slow path or doubles would cost the register-bound
// kernels spills, and so would this code inlined, so it is out of line (div_rn calls it only
// for extreme operands). The significands divide in [1, 2): from div_y = RN(1 / div_m), two
// Markstein corrections give the correctly rounded quotient of the significands (the first
// makes it faithful, the second correct; all values normal, so the residuals are exact). The
// exponent is then added exactly, or the result is Inf, or it is subnormal: rounded from the
// 24-bit quotient, whose grid holds every midpoint between subnormals, a midpoint decided by
// the sign of the exact residual. (Checked against div.rn for every a by .ci/scale_math.cu.)
inline __device__ __noinline__ float div_rn_general(float a, const ScaleRule& rule) {
  if (!(a > 0.0f) || a == INFINITY) return a;
  const bool sub = (__float_as_uint(a) >> 23) == 0;
  const uint32_t nb = __float_as_uint(sub ? a * 0x1p64f : a);  // normal, exact
  const float ma = __uint_as_float((nb & 0x007FFFFFu) | 0x3F800000u);  // in [1, 2)
  const int e = static_cast<int>(nb >> 23) - 127 - (sub ? 64 : 0) - rule.div_e;
  const float m = rule.div_m, y = rule.div_y;
  const float q0 = ma * y;
  const float q1 = fmaf(fmaf(-q0, m, ma), y, q0);
  const float q = fmaf(fmaf(-q1, m, ma), y, q1);  // RN(ma / m), in [0.5, 2]
  const uint32_t qb = __float_as_uint(q);
  const int eq = static_cast<int>(qb >> 23) - 127 + e;  // the exponent of a / d
  if (eq > 127) return INFINITY;
  if (eq >= -126) return __uint_as_float(qb + (static_cast<uint32_t>(e) << 23));
  const int shift = -126 - eq;  // subnormal: the bits of q below 2^-149
  if (shift > 24) return 0.0f;  // below half the smallest subnormal
  const uint32_t mant = (qb & 0x007FFFFFu) | 0x00800000u;
  const uint32_t kept = mant >> shift, rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
  const float r = fmaf(-q, m, ma);  // exact: the side of ma / m
  const bool up = rest > half || (rest == half && (r > 0.0f || (r == 0.0f && (kept & 1u))));
  return __uint_as_float(kept + (up ? 1u : 0u));
}

// a / rule.divisor correctly rounded: a / divisor = (a * 2^-div_e) / div_m, and where
// a * 2^-div_e lies in [2^-100, 2^100] (so every intermediate is normal and the residuals are
// exact) inline, as in div_rn_general: the product with div_y and two Markstein corrections;
// elsewhere (tiny absmaxes of rules without a floor, extreme divisors, 0, Inf, NaN)
// div_rn_general.
__device__ __forceinline__ float div_rn(float a, const ScaleRule& rule) {
  const float x = a * rule.div_unscale;  // exact in that range
  if (x >= 0x1p-100f && x <= 0x1p100f) {
    const float m = rule.div_m, y = rule.div_y;
    const float q0 = x * y;
    const float q1 = fmaf(fmaf(-q0, m, x), y, q0);
    return fmaf(fmaf(-q1, m, x), y, q1);
  }
  return div_rn_general(a, rule);
}

// The GPU's arithmetic for the scale rule (scale_rule.h), in two instantiations of the kernels
// (RULE, row_op_kernels.cuh). The fixed rules (the per-token and per-token-group ops) divide by
// the format's maximum with div_by_qmax alone: their absmax floor (group) or scale floor
// (per-token: a quotient of an absmax below 1e-10 lies far under it either way) leaves no other
// case, and their scales are never subnormal; with the rule a compile-time constant
// (fixed_rule) their kernels compile to the arithmetic they always had. The rule ops' rule is
// a runtime value: the division by the format's maximum takes div_by_qmax where it is exact,
// every other one div_rn. Once per scale: the per-element work is the same in both.
template <OutKind OUT>
struct FixedScaleArith {
  static constexpr bool kSubnormalScales = false;
  __device__ static float div(float a, const ScaleRule&) { return div_by_qmax<OUT>(a); }
  __device__ static float round_to(float s, DType) { return s; }  // fixed rules: float32 scales
};
template <OutKind OUT>
struct RuleScaleArith {
  static constexpr bool kSubnormalScales = true;
  __device__ static float div(float a, const ScaleRule& r) {
    // (NaN too: it then comes out as the fixed rules' division gives it, bit for bit.)
    if (r.divisor == QuantTraits<OUT>::kMax && !(a < kGroupAbsmaxFloor)) return div_by_qmax<OUT>(a);
    return div_rn(a, r);
  }
  __device__ static float round_to(float s, DType t) {
    // through the packed pair conversions, round to nearest even on CUDA and HIP alike
    const float2 v = make_float2(s, s);
    return t == DType::kBFloat16 ? to_float2(from_float2<bf162_t>(v)).x : to_float2(from_float2<fp162_t>(v)).x;
  }
};

// The rule a kernel applies: the rule ops' (p.rule) in the RULE instantiation, else the fixed
// rule of the quant mode as a compile-time constant (per_token_rule / group_rule, row_op.h; only
// UE8M0 of the group rule is a runtime choice).
template <OutKind OUT, QuantMode Q, bool RULE>
__device__ __forceinline__ ScaleRule kernel_rule(const RowOpParams& p) {
  if constexpr (RULE) {
    return p.rule;
  } else {
    constexpr float qmax = QuantTraits<OUT>::kMax;
    ScaleRule r;
    r.divisor = qmax;
    if constexpr (Q == QuantMode::kPerToken) {
      constexpr float min_scale = 1.0f / (qmax * kPerTokenMinScaleFactor);  // qmax * 512 is exact
      r.scale_floor = min_scale;
    } else {
      r.absmax_floor = kGroupAbsmaxFloor;
      r.ue8m0 = p.rule.ue8m0;
    }
    return r;
  }
}

// The dynamic scale of an absmax (scale_rule.h's dynamic_scale, the one implementation).
template <OutKind OUT, bool RULE>
__device__ __forceinline__ float scale_of(float amax, const ScaleRule& rule) {
  if constexpr (RULE) {
    return dynamic_scale<RuleScaleArith<OUT>>(amax, rule);
  } else {
    return dynamic_scale<FixedScaleArith<OUT>>(amax, rule);
  }
}

// 1 / s correctly rounded for every scale s >= +0 (Inf and NaN included), without rcp.rn's
// slow-path subroutine call (see div_rn_general). In [2^-126, 2^126] (every scale of the fixed
// rules) it is rcp_scale. Scales of rules without a floor or with a small divisor can lie outside:
// below 2^-126, rcp_scale of s * 2^64, times 2^64 (exact, or overflowing to Inf as 1 / s does);
// above 2^126 the reciprocal is subnormal: y = RN(4 / s) is normal and its grid holds every
// midpoint between subnormals, so RN(y / 4) is RN(1 / s) unless y / 4 is exactly such a midpoint
// (y's low bits say so); then y moves one ulp towards 4 / s (the sign of the exact residual
// 1 - (s / 4) y, one fma), off the midpoint to the side of 1 / s. One rcp_scale serves all three
// ranges, and the tie fix holds few values live: the register-bound kernels keep their budget.
// (Checked against rcp.rn for every float by .ci/scale_math.cu.)
__device__ __forceinline__ float scale_reciprocal(float s) {
#if FK_HIP
  return __frcp_rn(s);
#else
  const bool tiny = s < 0x1p-126f;
  const bool big = s > 0x1p126f;
  const float k = tiny ? 0x1p64f : (big ? 0.25f : 1.0f);
  const float t = s * k;  // exact
  float y = rcp_scale(t);
  if (big) {
    const uint32_t b = __float_as_uint(y);  // y in [2^-126, 2^-124) (or 0 for s = Inf)
    if ((b >> 23) == 1u ? (b & 3u) == 2u : (b & 1u) == 1u) {
      const float e = fmaf(-t, y, 1.0f);  // exact
      y = __uint_as_float(b + (e > 0.0f) - (e < 0.0f));
    }
  }
  return s == 0.0f ? INFINITY : y * k;  // y * k: exact, or the one rounding to a subnormal / Inf
#endif
}

// 1 / scale: the fixed rules' scales lie in [2^-126, 2^126] (or are Inf / NaN), where rcp_scale
// is correctly rounded; the rule ops' may be anywhere.
template <bool RULE>
__device__ __forceinline__ float reciprocal_of_scale(float s) {
  if constexpr (RULE) {
    return scale_reciprocal(s);
  } else {
    return rcp_scale(s);
  }
}

// The per-token scale of a row from its absmax: the absmax clamped to the optional upper bound
// p.scale_ub (fixed-rule ops only), then the rule.
template <OutKind OUT, bool RULE>
__device__ __forceinline__ float per_token_scale(float amax, const RowOpParams& p) {
  const float ub = p.scale_ub != nullptr ? *p.scale_ub : 0.0f;
  const float a = (p.scale_ub != nullptr && amax > ub) ? ub : amax;
  return scale_of<OUT, RULE>(a, kernel_rule<OUT, QuantMode::kPerToken, RULE>(p));
}

}  // namespace dev
}  // namespace fusion_kernels
