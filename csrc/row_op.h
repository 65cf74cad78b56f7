// SPDX-License-Identifier: Apache-2.0
// The one description of a "row op" that every kernel in this library executes:
//   [residual add] -> [RMSNorm] -> [quantize]
// over rows of a [rows, hidden] matrix. Knows nothing about torch: raw pointers, sizes, enums.
// Every public op (rms_norm, the quant ops, the fused ops) is a RowOpParams with some stages off,
// so the unfused and fused ops share one implementation per device and agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

// The rule ops on CUDA/HIP (their own RULE instantiation of the row kernels, launch.cuh). 0 leaves
// them out (about half the GPU build time): the rule ops then have CPU kernels only and the pass
// refuses their sites on a GPU with no_kernel_for_device. The fixed-rule kernels are the same
// either way (their PTX is identical).
#ifndef FK_GPU_RULE_OPS
#define FK_GPU_RULE_OPS 1
#endif

namespace fusion_kernels {

enum class DType : int32_t { kFloat32, kFloat16, kBFloat16, kFp8E4m3fn, kFp8E4m3fnuz, kInt8 };

enum class QuantMode : int32_t {
  kNone,      // output in the input dtype (rms_norm, fused_add_rms_norm)
  kStatic,    // one fp32 scale for the whole tensor
  kPerToken,  // one fp32 scale per row, computed from the row's absmax
  kPerGroup,  // one fp32 scale per `group_size` elements of a row
  // One fp32 scale for the whole tensor, from the absmax of all of it (the rule ops'
  // group_size -1). Two passes over the rows (per_tensor.h): the rows' absmaxes without writing
  // q, then the scale, then a static quant with it.
  kPerTensor,
};

// Quantization constants shared by every kernel and by the Python reference
// (fusion_kernels/reference.py mirrors them; tests compare the two).
constexpr float kFp8E4m3fnMax = 448.0f;
constexpr float kFp8E4m3fnuzMax = 240.0f;
constexpr float kInt8Max = 127.0f;
constexpr float kInt8Min = -128.0f;
// Per-token scales never go below 1 / (qmax * 512): an all-zero row keeps a finite, positive
// scale, and the value is the one vLLM's per-token kernels and references use.
constexpr float kPerTokenMinScaleFactor = 512.0f;
// Per-group scales use the absmax floored at 1e-10 (the per_token_group_quant convention of
// DeepGEMM-style FP8 GEMM integrations).
constexpr float kGroupAbsmaxFloor = 1e-10f;

// How a dynamic scale (kPerToken, kPerGroup) follows from the absmax `a` of its row or group, in
// this order (scale_rule.h implements it; fusion_kernels/reference.py, dynamic_scale, is the
// spec): a = max(a, absmax_floor); s = a / divisor (correctly rounded); s rounded to scale_dtype;
// UE8M0: s rounded up to a power of two; s = max(s, scale_floor); s == 0 -> zero_scale. A floor
// or zero_scale of 0 is off; NaN passes every step. Runtime values: the rule ops take them as
// arguments, the fixed-rule ops set their constants (per_token_rule, group_rule).
struct ScaleRule {
  float divisor = 1.0f;  // > 0, finite
  // For the GPU's division (quantizers.cuh), set with divisor by set_divisor: divisor =
  // div_m * 2^div_e with div_m in [1, 2); div_y = 1 / div_m correctly rounded; div_unscale =
  // 2^-div_e (0 where that is not a normal float).
  float div_m = 1.0f;
  float div_y = 1.0f;
  float div_unscale = 1.0f;
  int32_t div_e = 0;
  float absmax_floor = 0.0f;  // >= 0
  float scale_floor = 0.0f;  // >= 0
  float zero_scale = 0.0f;  // >= 0
  DType scale_dtype = DType::kFloat32;  // kFloat32 (no rounding), kBFloat16 or kFloat16
  bool ue8m0 = false;
  // The quotient y * (1 / s) rounded to the input's dtype (to nearest even) before the cast to
  // the quant dtype, as plain torch computes `y / scale` in a 16-bit model (compressed-tensors'
  // quantizer). Per row or per group only (the rule ops' check).
  bool round_quotient = false;
  // Set by per_token_rule / group_rule: the GPU then runs the fixed-rule instantiation of its
  // kernels (the rule a compile-time constant, launch.cuh), which compiles as the kernels did
  // before the rule ops; kRuleGiven (the rule ops): the RULE instantiation, p.rule at run time.
  int8_t fixed = kRuleGiven;
  static constexpr int8_t kRuleGiven = 0, kPerTokenRule = 1, kGroupRule = 2;

  void set_divisor(float d) {
    divisor = d;
    int e = 0;
    div_m = 2.0f * std::frexp(d, &e);
    div_e = e - 1;
    div_y = 1.0f / div_m;
    div_unscale = (div_e >= -126 && div_e <= 126) ? std::ldexp(1.0f, -div_e) : 0.0f;
  }
};

inline float quant_max(DType d) {
  switch (d) {
    case DType::kFp8E4m3fn: return kFp8E4m3fnMax;
    case DType::kFp8E4m3fnuz: return kFp8E4m3fnuzMax;
    case DType::kInt8: return kInt8Max;
    default: return 0.0f;
  }
}

inline int element_size(DType d) {
  switch (d) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    default: return 1;
  }
}

// The rule of the per-token ops: a / qmax floored at 1 / (qmax * 512), in fp32 as the kernels
// always computed it.
inline ScaleRule per_token_rule(DType out) {
  ScaleRule r;
  r.set_divisor(quant_max(out));
  r.scale_floor = 1.0f / (quant_max(out) * kPerTokenMinScaleFactor);
  r.fixed = ScaleRule::kPerTokenRule;
  return r;
}

// The rule of the per-token-group ops: max(a, 1e-10) / qmax, optionally UE8M0.
inline ScaleRule group_rule(DType out, bool ue8m0) {
  ScaleRule r;
  r.set_divisor(quant_max(out));
  r.absmax_floor = kGroupAbsmaxFloor;
  r.ue8m0 = ue8m0;
  r.fixed = ScaleRule::kGroupRule;
  return r;
}

// The largest hidden size: offsets within a row are 32-bit in the GPU kernels.
constexpr int64_t kMaxHidden = int64_t{1} << 30;

struct RowOpParams {
  int64_t rows = 0;
  int64_t hidden = 0;  // 1 .. kMaxHidden
  DType in_dtype = DType::kFloat32;

  const void* input = nullptr;  // [rows, hidden], last dim contiguous
  int64_t input_row_stride = 0;  // in elements

  const void* residual = nullptr;  // optional, same dtype as input
  int64_t residual_row_stride = 0;
  void* residual_out = nullptr;  // contiguous [rows, hidden], set iff residual

  const void* weight = nullptr;  // [hidden]; nullptr: no norm stage
  DType weight_dtype = DType::kFloat32;
  float epsilon = 0.0f;

  QuantMode quant = QuantMode::kNone;
  DType out_dtype = DType::kFloat32;  // == in_dtype when quant == kNone
  void* out = nullptr;  // contiguous [rows, hidden]; kPerToken with a given rule: nullptr writes
                        // the scales only (the per-tensor ops' first pass)

  const float* scale = nullptr;  // kStatic: one element
  const float* scale_ub = nullptr;  // kPerToken: optional upper bound on the absmax
  float* scales = nullptr;  // kPerToken: [rows]; kPerGroup: [rows, hidden / group_size] strided;
                            // kPerTensor: one element
  float* workspace = nullptr;  // kPerTensor: [rows], the rows' absmaxes
  // The rule ops' norm-output variants: the normalised output y written too (contiguous
  // [rows, hidden] in the input dtype), for a consumer other than the quantizer. nullptr: not.
  void* norm_out = nullptr;
  int64_t scale_row_stride = 0;
  int64_t scale_group_stride = 0;
  // kPerGroup: the scales as UE8M0 bytes packed four groups to an int32, MN-major (DeepGEMM's
  // layout on sm_100): int32 [rows, ceil(groups / 4)] with strides (1, scale_group_stride), the
  // rows padded to scale_group_stride = 4 * ceil(rows / 4); byte g % 4 of int32 [row, g / 4] is
  // group g's scale (a power of two: its fp32 exponent). The padding bytes are written as 0.
  // `scales` then points at the int32s; scale_row_stride is 1. (store_group_scale, scale_rule.h)
  bool packed_ue8m0_scales = false;
  // kPerGroup with column-major scales padded for TMA (DeepGEMM's sm_90 fp32 layout, and the
  // packed one): the rows the scales' columns hold (4 * ceil(rows / 4)); the padding rows are
  // written as 0. 0: no padding rows.
  int64_t scale_padded_rows = 0;
  int64_t group_size = 0;
  ScaleRule rule;  // kPerToken, kPerGroup, kPerTensor: how the scales follow from the absmax
};

// The rule that keeps the absmax as it is (divisor 1, no floor, no rounding): a per-token pass
// with it writes each row's absmax as its "scale".
inline ScaleRule identity_rule() {
  ScaleRule r;
  r.set_divisor(1.0f);
  return r;
}

}  // namespace fusion_kernels
