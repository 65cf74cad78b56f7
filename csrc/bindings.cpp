// SPDX-License-Identifier: Apache-2.0
// The one place that defines the fusion_kernels schemas and registers their kernels.
// Every op is functional: it allocates and returns its outputs and mutates nothing, so the
// post-grad graph shows plain call_function nodes that the pass can rewrite.
#include <torch/csrc/stable/library.h>

#include "mx_ops.h"
#include "ops.h"
#include "row_op.h"

using namespace fusion_kernels;

STABLE_TORCH_LIBRARY(fusion_kernels, m) {
  m.def("rms_norm(Tensor input, Tensor weight, float epsilon) -> Tensor");
  m.def(
      "fused_add_rms_norm(Tensor input, Tensor residual, Tensor weight, float epsilon) "
      "-> (Tensor out, Tensor residual_out)");
  m.def("static_scaled_fp8_quant(Tensor input, Tensor scale, ScalarType fp8_dtype) -> Tensor");
  m.def(
      "dynamic_per_token_scaled_fp8_quant(Tensor input, Tensor? scale_ub, ScalarType fp8_dtype) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "per_token_group_fp8_quant(Tensor input, int group_size, bool column_major_scales, bool scale_ue8m0, "
      "ScalarType fp8_dtype, bool tma_aligned_scales=False) -> (Tensor out, Tensor scales)");
  m.def("static_scaled_int8_quant(Tensor input, Tensor scale) -> Tensor");
  m.def("dynamic_scaled_int8_quant(Tensor input) -> (Tensor out, Tensor scales)");
  m.def(
      "rms_norm_static_fp8_quant(Tensor input, Tensor weight, Tensor scale, float epsilon, "
      "ScalarType fp8_dtype) -> Tensor");
  m.def(
      "fused_add_rms_norm_static_fp8_quant(Tensor input, Tensor residual, Tensor weight, Tensor scale, "
      "float epsilon, ScalarType fp8_dtype) -> (Tensor out, Tensor residual_out)");
  m.def(
      "rms_norm_dynamic_per_token_quant(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, "
      "Tensor? scale_ub) -> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_dynamic_per_token_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "ScalarType quant_dtype, Tensor? scale_ub) -> (Tensor out, Tensor scales, Tensor residual_out)");
  m.def(
      "rms_norm_per_token_group_quant(Tensor input, Tensor weight, float epsilon, int group_size, "
      "bool column_major_scales, bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales=False) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_per_token_group_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "int group_size, bool column_major_scales, bool scale_ue8m0, ScalarType fp8_dtype, "
      "bool tma_aligned_scales=False) -> (Tensor out, Tensor scales, Tensor residual_out)");
  // The per-token-group ops with UE8M0 scales packed four to an int32, MN-major (DeepGEMM's layout).
  m.def(
      "per_token_group_fp8_quant_packed(Tensor input, int group_size, ScalarType fp8_dtype) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "rms_norm_per_token_group_quant_packed(Tensor input, Tensor weight, float epsilon, int group_size, "
      "ScalarType fp8_dtype) -> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_per_token_group_quant_packed(Tensor input, Tensor residual, Tensor weight, "
      "float epsilon, int group_size, ScalarType fp8_dtype) -> (Tensor out, Tensor scales, Tensor residual_out)");
  m.def("rms_norm_static_int8_quant(Tensor input, Tensor weight, Tensor scale, float epsilon) -> Tensor");
  m.def(
      "fused_add_rms_norm_static_int8_quant(Tensor input, Tensor residual, Tensor weight, Tensor scale, "
      "float epsilon) -> (Tensor out, Tensor residual_out)");
  // The rule ops: the dynamic scale rule as arguments (ScaleRule, row_op.h).
  m.def(
      "dynamic_quant(Tensor input, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, "
      "float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "rms_norm_dynamic_quant(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, "
      "float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, "
      "bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_dynamic_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, "
      "float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) "
      "-> (Tensor out, Tensor scales, Tensor residual_out)");
  // Their norm-output variants: the normalised output too, for a consumer other than the quantizer.
  m.def(
      "rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, "
      "int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, "
      "ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) "
      "-> (Tensor out, Tensor scales, Tensor norm_out)");
  m.def(
      "fused_add_rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, "
      "float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) "
      "-> (Tensor out, Tensor scales, Tensor residual_out, Tensor norm_out)");
}

// The same host functions serve both dispatch keys: they check arguments, allocate on the
// input's device and hand off to the CPU or CUDA row op.
#define FK_REGISTER_ALL(m)                                                                               \
  m.impl("rms_norm", TORCH_BOX(&rms_norm));                                                              \
  m.impl("fused_add_rms_norm", TORCH_BOX(&fused_add_rms_norm));                                          \
  m.impl("static_scaled_fp8_quant", TORCH_BOX(&static_scaled_fp8_quant));                                \
  m.impl("dynamic_per_token_scaled_fp8_quant", TORCH_BOX(&dynamic_per_token_scaled_fp8_quant));          \
  m.impl("per_token_group_fp8_quant", TORCH_BOX(&per_token_group_fp8_quant));                            \
  m.impl("static_scaled_int8_quant", TORCH_BOX(&static_scaled_int8_quant));                              \
  m.impl("dynamic_scaled_int8_quant", TORCH_BOX(&dynamic_scaled_int8_quant));                            \
  m.impl("rms_norm_static_fp8_quant", TORCH_BOX(&rms_norm_static_fp8_quant));                            \
  m.impl("fused_add_rms_norm_static_fp8_quant", TORCH_BOX(&fused_add_rms_norm_static_fp8_quant));        \
  m.impl("rms_norm_dynamic_per_token_quant", TORCH_BOX(&rms_norm_dynamic_per_token_quant));              \
  m.impl("fused_add_rms_norm_dynamic_per_token_quant", TORCH_BOX(&fused_add_rms_norm_dynamic_per_token_quant)); \
  m.impl("rms_norm_per_token_group_quant", TORCH_BOX(&rms_norm_per_token_group_quant));                  \
  m.impl("fused_add_rms_norm_per_token_group_quant", TORCH_BOX(&fused_add_rms_norm_per_token_group_quant)); \
  m.impl("per_token_group_fp8_quant_packed", TORCH_BOX(&per_token_group_fp8_quant_packed));              \
  m.impl("rms_norm_per_token_group_quant_packed", TORCH_BOX(&rms_norm_per_token_group_quant_packed));    \
  m.impl("fused_add_rms_norm_per_token_group_quant_packed",                                              \
         TORCH_BOX(&fused_add_rms_norm_per_token_group_quant_packed));                                   \
  m.impl("rms_norm_static_int8_quant", TORCH_BOX(&rms_norm_static_int8_quant));                          \
  m.impl("fused_add_rms_norm_static_int8_quant", TORCH_BOX(&fused_add_rms_norm_static_int8_quant))

#define FK_REGISTER_RULE_OPS(m)                                                                          \
  m.impl("dynamic_quant", TORCH_BOX(&dynamic_quant));                                                    \
  m.impl("rms_norm_dynamic_quant", TORCH_BOX(&rms_norm_dynamic_quant));                                  \
  m.impl("fused_add_rms_norm_dynamic_quant", TORCH_BOX(&fused_add_rms_norm_dynamic_quant));                \
  m.impl("rms_norm_dynamic_quant_with_norm_out", TORCH_BOX(&rms_norm_dynamic_quant_with_norm_out));        \
  m.impl("fused_add_rms_norm_dynamic_quant_with_norm_out", TORCH_BOX(&fused_add_rms_norm_dynamic_quant_with_norm_out))

STABLE_TORCH_LIBRARY_IMPL(fusion_kernels, CPU, m) {
  FK_REGISTER_ALL(m);
  FK_REGISTER_RULE_OPS(m);
}

#ifdef FK_WITH_CUDA
// The rule ops run their own instantiation of the GPU kernels (RULE, launch.cuh), so the
// fixed-rule ops' kernels compile exactly as they did before the rule ops existed. Left out of
// builds with FK_GPU_RULE_OPS=0 (row_op.h).
STABLE_TORCH_LIBRARY_IMPL(fusion_kernels, CUDA, m) {
  FK_REGISTER_ALL(m);
#if FK_GPU_RULE_OPS
  FK_REGISTER_RULE_OPS(m);
#endif
}
#endif

// --- The microscaling quant ops (mx_ops.h): MXFP8, MXFP4, NVFP4, unfused and fused with RMSNorm.
// scale_mode: "floor", "rceil", "ceil" or "even"; swizzled_scales: the 128x4 tile layout instead
// of row-major [..., H / block]; FP4 outputs are packed two per byte as uint8 [..., H / 2].
// CPU and CUDA / HIP kernels (the same host bodies: they hand off by the input's device).
STABLE_TORCH_LIBRARY_FRAGMENT(fusion_kernels, m) {
  m.def("mxfp8_quant(Tensor input, ScalarType fp8_dtype, str scale_mode, bool swizzled_scales) "
        "-> (Tensor out, Tensor scales)");
  m.def("mxfp4_quant(Tensor input, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales)");
  m.def(
      "nvfp4_quant(Tensor input, Tensor global_scale, bool global_scale_is_multiplier, bool swizzled_scales) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "rms_norm_mxfp8_quant(Tensor input, Tensor weight, float epsilon, ScalarType fp8_dtype, str scale_mode, "
      "bool swizzled_scales) -> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_mxfp8_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "ScalarType fp8_dtype, str scale_mode, bool swizzled_scales) "
      "-> (Tensor out, Tensor scales, Tensor residual_out)");
  m.def(
      "rms_norm_mxfp4_quant(Tensor input, Tensor weight, float epsilon, str scale_mode, bool swizzled_scales) "
      "-> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_mxfp4_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales, Tensor residual_out)");
  m.def(
      "rms_norm_nvfp4_quant(Tensor input, Tensor weight, float epsilon, Tensor global_scale, "
      "bool global_scale_is_multiplier, bool swizzled_scales) -> (Tensor out, Tensor scales)");
  m.def(
      "fused_add_rms_norm_nvfp4_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
      "Tensor global_scale, bool global_scale_is_multiplier, bool swizzled_scales) "
      "-> (Tensor out, Tensor scales, Tensor residual_out)");
}

#define FK_REGISTER_MX_OPS(m)                                                                            \
  m.impl("mxfp8_quant", TORCH_BOX(&mxfp8_quant));                                                        \
  m.impl("mxfp4_quant", TORCH_BOX(&mxfp4_quant));                                                        \
  m.impl("nvfp4_quant", TORCH_BOX(&nvfp4_quant));                                                        \
  m.impl("rms_norm_mxfp8_quant", TORCH_BOX(&rms_norm_mxfp8_quant));                                      \
  m.impl("fused_add_rms_norm_mxfp8_quant", TORCH_BOX(&fused_add_rms_norm_mxfp8_quant));                  \
  m.impl("rms_norm_mxfp4_quant", TORCH_BOX(&rms_norm_mxfp4_quant));                                      \
  m.impl("fused_add_rms_norm_mxfp4_quant", TORCH_BOX(&fused_add_rms_norm_mxfp4_quant));                  \
  m.impl("rms_norm_nvfp4_quant", TORCH_BOX(&rms_norm_nvfp4_quant));                                      \
  m.impl("fused_add_rms_norm_nvfp4_quant", TORCH_BOX(&fused_add_rms_norm_nvfp4_quant))

STABLE_TORCH_LIBRARY_IMPL(fusion_kernels, CPU, m) { FK_REGISTER_MX_OPS(m); }

#ifdef FK_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(fusion_kernels, CUDA, m) { FK_REGISTER_MX_OPS(m); }
#endif
