// SPDX-License-Identifier: Apache-2.0
// The library's ops as C++ functions over stable-ABI tensors: argument checks, output
// allocation, and the hand-off to the CPU or CUDA row-op implementation. Schemas and
// registrations live in bindings.cpp.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <optional>
#include <tuple>

namespace fusion_kernels {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

Tensor rms_norm(Tensor input, Tensor weight, double epsilon);
std::tuple<Tensor, Tensor> fused_add_rms_norm(Tensor input, Tensor residual, Tensor weight, double epsilon);

Tensor static_scaled_fp8_quant(Tensor input, Tensor scale, ScalarType fp8_dtype);
std::tuple<Tensor, Tensor> dynamic_per_token_scaled_fp8_quant(Tensor input, std::optional<Tensor> scale_ub,
                                                              ScalarType fp8_dtype);
std::tuple<Tensor, Tensor> per_token_group_fp8_quant(Tensor input, int64_t group_size, bool column_major_scales,
                                                     bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales);
Tensor static_scaled_int8_quant(Tensor input, Tensor scale);
std::tuple<Tensor, Tensor> dynamic_scaled_int8_quant(Tensor input);

Tensor rms_norm_static_fp8_quant(Tensor input, Tensor weight, Tensor scale, double epsilon, ScalarType fp8_dtype);
std::tuple<Tensor, Tensor> fused_add_rms_norm_static_fp8_quant(Tensor input, Tensor residual, Tensor weight,
                                                               Tensor scale, double epsilon, ScalarType fp8_dtype);
std::tuple<Tensor, Tensor> rms_norm_dynamic_per_token_quant(Tensor input, Tensor weight, double epsilon,
                                                            ScalarType quant_dtype, std::optional<Tensor> scale_ub);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_per_token_quant(Tensor input, Tensor residual,
                                                                              Tensor weight, double epsilon,
                                                                              ScalarType quant_dtype,
                                                                              std::optional<Tensor> scale_ub);
std::tuple<Tensor, Tensor> rms_norm_per_token_group_quant(Tensor input, Tensor weight, double epsilon,
                                                          int64_t group_size, bool column_major_scales,
                                                          bool scale_ue8m0, ScalarType fp8_dtype,
                                                          bool tma_aligned_scales);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_per_token_group_quant(Tensor input, Tensor residual,
                                                                            Tensor weight, double epsilon,
                                                                            int64_t group_size,
                                                                            bool column_major_scales,
                                                                            bool scale_ue8m0, ScalarType fp8_dtype,
                                                                            bool tma_aligned_scales);
std::tuple<Tensor, Tensor> per_token_group_fp8_quant_packed(Tensor input, int64_t group_size, ScalarType fp8_dtype);
std::tuple<Tensor, Tensor> rms_norm_per_token_group_quant_packed(Tensor input, Tensor weight, double epsilon,
                                                                 int64_t group_size, ScalarType fp8_dtype);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_per_token_group_quant_packed(Tensor input, Tensor residual,
                                                                                   Tensor weight, double epsilon,
                                                                                   int64_t group_size,
                                                                                   ScalarType fp8_dtype);
Tensor rms_norm_static_int8_quant(Tensor input, Tensor weight, Tensor scale, double epsilon);
std::tuple<Tensor, Tensor> fused_add_rms_norm_static_int8_quant(Tensor input, Tensor residual, Tensor weight,
                                                                Tensor scale, double epsilon);

// The rule ops: dynamic quantization, one scale per row (group_size 0) or per group of
// group_size elements, whose scale rule is given by the arguments (ScaleRule, row_op.h).
std::tuple<Tensor, Tensor> dynamic_quant(Tensor input, ScalarType quant_dtype, int64_t group_size, double divisor,
                                         double absmax_floor, double scale_floor, double zero_scale,
                                         ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient);
std::tuple<Tensor, Tensor> rms_norm_dynamic_quant(Tensor input, Tensor weight, double epsilon, ScalarType quant_dtype,
                                                  int64_t group_size, double divisor, double absmax_floor,
                                                  double scale_floor, double zero_scale, ScalarType scale_dtype,
                                                  bool scale_ue8m0, bool round_quotient);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_quant(Tensor input, Tensor residual, Tensor weight,
                                                                    double epsilon, ScalarType quant_dtype,
                                                                    int64_t group_size, double divisor,
                                                                    double absmax_floor, double scale_floor,
                                                                    double zero_scale, ScalarType scale_dtype,
                                                                    bool scale_ue8m0, bool round_quotient);
// The norm-output variants of the fused rule ops: the normalised output returned too (last).
std::tuple<Tensor, Tensor, Tensor> rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor weight, double epsilon,
                                                                        ScalarType quant_dtype, int64_t group_size,
                                                                        double divisor, double absmax_floor,
                                                                        double scale_floor, double zero_scale,
                                                                        ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient);
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_quant_with_norm_out(
    Tensor input, Tensor residual, Tensor weight, double epsilon, ScalarType quant_dtype, int64_t group_size,
    double divisor, double absmax_floor, double scale_floor, double zero_scale, ScalarType scale_dtype,
    bool scale_ue8m0, bool round_quotient);

}  // namespace fusion_kernels
