// SPDX-License-Identifier: Apache-2.0
// The rule ops' host bodies (ops.h): dynamic quantization whose scale rule is given by the
// arguments (ScaleRule, row_op.h), per tensor, per row or per group, and the fused ops'
// norm-output variants.
#include "ops.h"
#include "op_request.h"

namespace fusion_kernels {

using detail::Outputs;
using detail::Request;
using detail::rule_request;
using detail::run;

std::tuple<Tensor, Tensor> dynamic_quant(Tensor input, ScalarType quant_dtype, int64_t group_size, double divisor,
                                         double absmax_floor, double scale_floor, double zero_scale,
                                         ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient) {
  const char* op = "dynamic_quant";
  ScaleRule rule;
  Request r = rule_request(op, rule, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                           scale_dtype, scale_ue8m0, round_quotient);
  Outputs o = run(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> rms_norm_dynamic_quant(Tensor input, Tensor weight, double epsilon, ScalarType quant_dtype,
                                                  int64_t group_size, double divisor, double absmax_floor,
                                                  double scale_floor, double zero_scale, ScalarType scale_dtype,
                                                  bool scale_ue8m0, bool round_quotient) {
  const char* op = "rms_norm_dynamic_quant";
  ScaleRule rule;
  Request r = rule_request(op, rule, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                           scale_dtype, scale_ue8m0, round_quotient);
  r.weight = &weight;
  r.epsilon = epsilon;
  Outputs o = run(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_quant(Tensor input, Tensor residual, Tensor weight,
                                                                    double epsilon, ScalarType quant_dtype,
                                                                    int64_t group_size, double divisor,
                                                                    double absmax_floor, double scale_floor,
                                                                    double zero_scale, ScalarType scale_dtype,
                                                                    bool scale_ue8m0, bool round_quotient) {
  const char* op = "fused_add_rms_norm_dynamic_quant";
  ScaleRule rule;
  Request r = rule_request(op, rule, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                           scale_dtype, scale_ue8m0, round_quotient);
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  Outputs o = run(op, input, r);
  return {o.out, o.scales, o.residual_out};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor weight, double epsilon,
                                                                        ScalarType quant_dtype, int64_t group_size,
                                                                        double divisor, double absmax_floor,
                                                                        double scale_floor, double zero_scale,
                                                                        ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient) {
  const char* op = "rms_norm_dynamic_quant_with_norm_out";
  ScaleRule rule;
  Request r = rule_request(op, rule, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                           scale_dtype, scale_ue8m0, round_quotient);
  r.weight = &weight;
  r.epsilon = epsilon;
  r.norm_out = true;
  Outputs o = run(op, input, r);
  return {o.out, o.scales, o.norm_out};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_quant_with_norm_out(
    Tensor input, Tensor residual, Tensor weight, double epsilon, ScalarType quant_dtype, int64_t group_size,
    double divisor, double absmax_floor, double scale_floor, double zero_scale, ScalarType scale_dtype,
    bool scale_ue8m0, bool round_quotient) {
  const char* op = "fused_add_rms_norm_dynamic_quant_with_norm_out";
  ScaleRule rule;
  Request r = rule_request(op, rule, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                           scale_dtype, scale_ue8m0, round_quotient);
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.norm_out = true;
  Outputs o = run(op, input, r);
  return {o.out, o.scales, o.residual_out, o.norm_out};
}

}  // namespace fusion_kernels
