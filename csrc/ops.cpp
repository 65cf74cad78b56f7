// SPDX-License-Identifier: Apache-2.0
// The ops' host bodies: each op is a row op (row_op.h) with some stages off. run() checks the
// arguments (checks.h), allocates the outputs, fills RowOpParams and hands them to the CPU or
// CUDA implementation. The rule ops' bodies are in rule_ops.cpp, the microscaling ops' in mx_ops.cpp.
#include "ops.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "cpu/row_op_cpu.h"
#include "op_request.h"
#include "row_op.h"
#include "tensor_rows.h"
#ifdef FK_WITH_CUDA
#include "cuda/row_op_cuda.h"
#endif

namespace fusion_kernels {
namespace {

void launch(const char* op, const RowOpParams& p, const Tensor& input) {
  if (p.rows == 0 && p.quant != QuantMode::kPerTensor) return;  // per tensor: the scale of no rows
  if (input.is_cuda()) {
#ifdef FK_WITH_CUDA
    torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
    row_op_cuda(p, input.get_device_index());
#else
    fail(op, "this build of the library has no CUDA kernels");
#endif
  } else {
    row_op_cpu(p);
  }
}

}  // namespace

namespace detail {

Request rule_request(const char* op, ScaleRule& rule, ScalarType quant_dtype, int64_t group_size, double divisor,
                     double absmax_floor, double scale_floor, double zero_scale, ScalarType scale_dtype,
                     bool scale_ue8m0, bool round_quotient) {
  check_rule(op, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype, round_quotient);
  rule.set_divisor(to_float32(divisor));
  rule.absmax_floor = to_float32(absmax_floor);
  rule.scale_floor = to_float32(scale_floor);
  rule.zero_scale = to_float32(zero_scale);
  rule.scale_dtype = *to_dtype(scale_dtype);
  rule.ue8m0 = scale_ue8m0;
  rule.round_quotient = round_quotient;
  Request r;
  r.quant = group_size == 0 ? QuantMode::kPerToken : (group_size < 0 ? QuantMode::kPerTensor : QuantMode::kPerGroup);
  r.out_dtype = quant_dtype;
  r.group_size = group_size;
  r.rule = &rule;
  return r;
}

Outputs run(const char* op, const Tensor& input, const Request& r) {
  check_input(op, input);
  const ScalarType in_st = input.scalar_type();
  const int64_t H = input.size(-1);
  if (r.weight) check_weight(op, *r.weight, input);
  if (r.weight) check_epsilon(op, r.epsilon);
  if (r.residual) check_residual(op, *r.residual, input);
  if (r.scale) check_scalar_scale(op, "scale", *r.scale, input);
  if (r.scale_ub && r.scale_ub->has_value()) check_scalar_scale(op, "scale_ub", r.scale_ub->value(), input);
  if (r.quant == QuantMode::kPerGroup) check_group(op, input, r.group_size, r.column_major_scales, r.tma_aligned_scales);

  RowOpParams p;
  const NormInputs bound = bind_norm_inputs(p, input, r.residual, r.weight, r.epsilon);
  const Rows& in = bound.in;

  Outputs o;
  o.residual_out = bound.residual_out;
  const ScalarType out_st = r.quant == QuantMode::kNone ? in_st : r.out_dtype;
  o.out = alloc(leading_shape(input, H), out_st, input);
  p.out = o.out.mutable_data_ptr();
  p.out_dtype = *to_dtype(out_st);
  p.quant = r.quant;

  if (r.norm_out) {
    o.norm_out = alloc(leading_shape(input, H), in_st, input);
    p.norm_out = o.norm_out.mutable_data_ptr();
  }
  if (r.scale) p.scale = static_cast<const float*>(r.scale->const_data_ptr());
  if (r.scale_ub && r.scale_ub->has_value()) p.scale_ub = static_cast<const float*>(r.scale_ub->value().const_data_ptr());

  if (r.quant == QuantMode::kPerToken) {
    o.scales = alloc(leading_shape(input, 1), ScalarType::Float, input);
    p.scales = static_cast<float*>(o.scales.mutable_data_ptr());
    p.scale_row_stride = 1;
    p.rule = r.rule ? *r.rule : per_token_rule(p.out_dtype);
  } else if (r.quant == QuantMode::kPerGroup) {
    const int64_t groups = H / r.group_size;
    if (r.packed_ue8m0_scales) {
      // int32 [rows, ceil(groups / 4)], strides (1, rows padded to 4): the narrowed transpose of a
      // contiguous [ceil(groups / 4), padded rows] tensor, every byte of which the kernel writes.
      const int64_t padded = (in.rows + 3) / 4 * 4;
      Tensor t = alloc({(groups + 3) / 4, padded}, ScalarType::Int, input);
      Tensor tt = torch::stable::transpose(t, 0, 1);
      o.scales = torch::stable::narrow(tt, 0, 0, in.rows);
      p.scale_row_stride = 1;
      p.scale_group_stride = padded;
      p.scale_padded_rows = padded;
      p.packed_ue8m0_scales = true;
    } else if (r.column_major_scales && r.tma_aligned_scales) {
      // fp32 [rows, groups], strides (1, rows padded to 4): DeepGEMM's sm_90 layout (TMA needs
      // 16-byte aligned columns); the padding rows are written as 0.
      const int64_t padded = (in.rows + 3) / 4 * 4;
      Tensor t = alloc({groups, padded}, ScalarType::Float, input);
      Tensor tt = torch::stable::transpose(t, 0, 1);
      o.scales = torch::stable::narrow(tt, 0, 0, in.rows);
      p.scale_row_stride = 1;
      p.scale_group_stride = padded;
      p.scale_padded_rows = padded;
    } else if (r.column_major_scales) {
      // The transpose of a contiguous [groups, tokens] tensor: what column-major FP8 GEMMs read.
      Tensor t = alloc({groups, in.rows}, ScalarType::Float, input);
      o.scales = torch::stable::transpose(t, 0, 1);
      p.scale_row_stride = 1;
      p.scale_group_stride = in.rows;
    } else {
      o.scales = alloc(leading_shape(input, groups), ScalarType::Float, input);
      p.scale_row_stride = groups;
      p.scale_group_stride = 1;
    }
    p.scales = static_cast<float*>(o.scales.mutable_data_ptr());  // (the int32s when packed)
    p.group_size = r.group_size;
    p.rule = r.rule ? *r.rule : group_rule(p.out_dtype, r.scale_ue8m0);
  } else if (r.quant == QuantMode::kPerTensor) {
    // One scale, shaped [1, ..., 1] like the input (as amax(keepdim=True) over every dim).
    o.scales = alloc(std::vector<int64_t>(static_cast<size_t>(input.dim()), 1), ScalarType::Float, input);
    p.scales = static_cast<float*>(o.scales.mutable_data_ptr());
    Tensor workspace = alloc({in.rows}, ScalarType::Float, input);
    p.workspace = static_cast<float*>(workspace.mutable_data_ptr());
    p.rule = *r.rule;
    launch(op, p, input);  // the workspace lives until the kernels are queued (the allocator
    return o;              // orders its reuse after them on the stream)
  }
  launch(op, p, input);
  return o;
}

}  // namespace detail

using detail::Outputs;
using detail::Request;
using detail::run;

Tensor rms_norm(Tensor input, Tensor weight, double epsilon) {
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  return run("rms_norm", input, r).out;
}

std::tuple<Tensor, Tensor> fused_add_rms_norm(Tensor input, Tensor residual, Tensor weight, double epsilon) {
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  Outputs o = run("fused_add_rms_norm", input, r);
  return {o.out, o.residual_out};
}

Tensor static_scaled_fp8_quant(Tensor input, Tensor scale, ScalarType fp8_dtype) {
  check_fp8_dtype("static_scaled_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.quant = QuantMode::kStatic;
  r.out_dtype = fp8_dtype;
  r.scale = &scale;
  return run("static_scaled_fp8_quant", input, r).out;
}

std::tuple<Tensor, Tensor> dynamic_per_token_scaled_fp8_quant(Tensor input, std::optional<Tensor> scale_ub,
                                                              ScalarType fp8_dtype) {
  check_fp8_dtype("dynamic_per_token_scaled_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.quant = QuantMode::kPerToken;
  r.out_dtype = fp8_dtype;
  r.scale_ub = &scale_ub;
  Outputs o = run("dynamic_per_token_scaled_fp8_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> per_token_group_fp8_quant(Tensor input, int64_t group_size, bool column_major_scales,
                                                     bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales) {
  check_fp8_dtype("per_token_group_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
  r.tma_aligned_scales = tma_aligned_scales;
  r.scale_ue8m0 = scale_ue8m0;
  Outputs o = run("per_token_group_fp8_quant", input, r);
  return {o.out, o.scales};
}

Tensor static_scaled_int8_quant(Tensor input, Tensor scale) {
  Request r;
  r.quant = QuantMode::kStatic;
  r.out_dtype = ScalarType::Char;
  r.scale = &scale;
  return run("static_scaled_int8_quant", input, r).out;
}

std::tuple<Tensor, Tensor> dynamic_scaled_int8_quant(Tensor input) {
  Request r;
  r.quant = QuantMode::kPerToken;
  r.out_dtype = ScalarType::Char;
  Outputs o = run("dynamic_scaled_int8_quant", input, r);
  return {o.out, o.scales};
}

Tensor rms_norm_static_fp8_quant(Tensor input, Tensor weight, Tensor scale, double epsilon, ScalarType fp8_dtype) {
  check_fp8_dtype("rms_norm_static_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kStatic;
  r.out_dtype = fp8_dtype;
  r.scale = &scale;
  return run("rms_norm_static_fp8_quant", input, r).out;
}

std::tuple<Tensor, Tensor> fused_add_rms_norm_static_fp8_quant(Tensor input, Tensor residual, Tensor weight,
                                                               Tensor scale, double epsilon, ScalarType fp8_dtype) {
  check_fp8_dtype("fused_add_rms_norm_static_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kStatic;
  r.out_dtype = fp8_dtype;
  r.scale = &scale;
  Outputs o = run("fused_add_rms_norm_static_fp8_quant", input, r);
  return {o.out, o.residual_out};
}

std::tuple<Tensor, Tensor> rms_norm_dynamic_per_token_quant(Tensor input, Tensor weight, double epsilon,
                                                            ScalarType quant_dtype, std::optional<Tensor> scale_ub) {
  check_fp8_dtype("rms_norm_dynamic_per_token_quant", "quant_dtype", quant_dtype, true);
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerToken;
  r.out_dtype = quant_dtype;
  r.scale_ub = &scale_ub;
  Outputs o = run("rms_norm_dynamic_per_token_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_dynamic_per_token_quant(Tensor input, Tensor residual,
                                                                              Tensor weight, double epsilon,
                                                                              ScalarType quant_dtype,
                                                                              std::optional<Tensor> scale_ub) {
  check_fp8_dtype("fused_add_rms_norm_dynamic_per_token_quant", "quant_dtype", quant_dtype, true);
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerToken;
  r.out_dtype = quant_dtype;
  r.scale_ub = &scale_ub;
  Outputs o = run("fused_add_rms_norm_dynamic_per_token_quant", input, r);
  return {o.out, o.scales, o.residual_out};
}

std::tuple<Tensor, Tensor> rms_norm_per_token_group_quant(Tensor input, Tensor weight, double epsilon,
                                                          int64_t group_size, bool column_major_scales,
                                                          bool scale_ue8m0, ScalarType fp8_dtype,
                                                          bool tma_aligned_scales) {
  check_fp8_dtype("rms_norm_per_token_group_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
  r.tma_aligned_scales = tma_aligned_scales;
  r.scale_ue8m0 = scale_ue8m0;
  Outputs o = run("rms_norm_per_token_group_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_per_token_group_quant(Tensor input, Tensor residual,
                                                                            Tensor weight, double epsilon,
                                                                            int64_t group_size,
                                                                            bool column_major_scales,
                                                                            bool scale_ue8m0, ScalarType fp8_dtype,
                                                                            bool tma_aligned_scales) {
  check_fp8_dtype("fused_add_rms_norm_per_token_group_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
  r.tma_aligned_scales = tma_aligned_scales;
  r.scale_ue8m0 = scale_ue8m0;
  Outputs o = run("fused_add_rms_norm_per_token_group_quant", input, r);
  return {o.out, o.scales, o.residual_out};
}

Tensor rms_norm_static_int8_quant(Tensor input, Tensor weight, Tensor scale, double epsilon) {
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kStatic;
  r.out_dtype = ScalarType::Char;
  r.scale = &scale;
  return run("rms_norm_static_int8_quant", input, r).out;
}

std::tuple<Tensor, Tensor> fused_add_rms_norm_static_int8_quant(Tensor input, Tensor residual, Tensor weight,
                                                                Tensor scale, double epsilon) {
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kStatic;
  r.out_dtype = ScalarType::Char;
  r.scale = &scale;
  Outputs o = run("fused_add_rms_norm_static_int8_quant", input, r);
  return {o.out, o.residual_out};
}

// The per-token-group ops with UE8M0 scales packed for DeepGEMM (RowOpParams::packed_ue8m0_scales):
// the group rule with UE8M0 rounding, the scales int32 [rows, ceil(groups / 4)], MN-major.
std::tuple<Tensor, Tensor> per_token_group_fp8_quant_packed(Tensor input, int64_t group_size, ScalarType fp8_dtype) {
  check_fp8_dtype("per_token_group_fp8_quant_packed", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.scale_ue8m0 = true;
  r.packed_ue8m0_scales = true;
  Outputs o = run("per_token_group_fp8_quant_packed", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> rms_norm_per_token_group_quant_packed(Tensor input, Tensor weight, double epsilon,
                                                                 int64_t group_size, ScalarType fp8_dtype) {
  check_fp8_dtype("rms_norm_per_token_group_quant_packed", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.scale_ue8m0 = true;
  r.packed_ue8m0_scales = true;
  Outputs o = run("rms_norm_per_token_group_quant_packed", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_per_token_group_quant_packed(Tensor input, Tensor residual,
                                                                                   Tensor weight, double epsilon,
                                                                                   int64_t group_size,
                                                                                   ScalarType fp8_dtype) {
  check_fp8_dtype("fused_add_rms_norm_per_token_group_quant_packed", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.scale_ue8m0 = true;
  r.packed_ue8m0_scales = true;
  Outputs o = run("fused_add_rms_norm_per_token_group_quant_packed", input, r);
  return {o.out, o.scales, o.residual_out};
}

}  // namespace fusion_kernels
