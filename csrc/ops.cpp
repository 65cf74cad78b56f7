// SPDX-License-Identifier: Apache-2.0
#include "ops.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>

#include <cmath>
#include <cstdio>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/row_op_cpu.h"
#include "row_op.h"
#ifdef FK_WITH_CUDA
#include "cuda/row_op_cuda.h"
#endif

namespace fusion_kernels {
namespace {

// Messages are assembled with std::string and snprintf rather than iostreams: formatting a
// number through an ostringstream inside an extension kernel crashed on torch 2.11's CPU build.
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
template <typename T>
void append(std::string& s, T v) {
  char buf[64];
  if constexpr (std::is_floating_point_v<T>) {
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
  }
  s += buf;
}

template <typename... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  std::string msg = std::string("fusion_kernels.") + op + ": ";
  (append(msg, args), ...);
  throw std::runtime_error(msg);
}

#define FK_CHECK(cond, op, ...) \
  do {                          \
    if (!(cond)) fail(op, __VA_ARGS__); \
  } while (0)

const char* name_of(ScalarType t) { return torch::headeronly::toString(t); }

std::optional<DType> to_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Half: return DType::kFloat16;
    case ScalarType::BFloat16: return DType::kBFloat16;
    case ScalarType::Float8_e4m3fn: return DType::kFp8E4m3fn;
    case ScalarType::Float8_e4m3fnuz: return DType::kFp8E4m3fnuz;
    case ScalarType::Char: return DType::kInt8;
    default: return std::nullopt;
  }
}

std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "a device other than cpu/cuda";
}

bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cpu() == b.is_cpu() && a.is_cuda() == b.is_cuda() &&
         (a.is_cpu() || a.get_device_index() == b.get_device_index());
}

void check_input(const char* op, const Tensor& input) {
  FK_CHECK(input.defined(), op, "input is undefined");
  FK_CHECK(input.is_cpu() || input.is_cuda(), op, "input must be on cpu or cuda, got ", device_str(input));
  const ScalarType st = input.scalar_type();
  FK_CHECK(st == ScalarType::Float || st == ScalarType::Half || st == ScalarType::BFloat16, op,
           "input must be float32, float16 or bfloat16, got ", name_of(st));
  FK_CHECK(input.dim() >= 1, op, "input must have at least one dimension (the hidden dim), got a 0-dim tensor");
  FK_CHECK(input.size(-1) > 0, op, "input's hidden size (last dim) must be > 0, got 0");
  FK_CHECK(input.size(-1) <= kMaxHidden, op, "input's hidden size (last dim) must be at most ", kMaxHidden, ", got ",
           input.size(-1));
  FK_CHECK(input.stride(-1) == 1 || input.size(-1) == 1, op,
           "input's last dim must be contiguous (stride 1), got stride ", input.stride(-1));
}

void check_same_device(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  FK_CHECK(same_device(t, input), op, name, " must be on the input's device (", device_str(input), "), got ",
           device_str(t));
}

void check_weight(const char* op, const Tensor& weight, const Tensor& input) {
  FK_CHECK(weight.defined(), op, "weight is undefined");
  check_same_device(op, "weight", weight, input);
  FK_CHECK(weight.dim() == 1 && weight.size(0) == input.size(-1), op, "weight must have shape [",
           input.size(-1), "] (the input's hidden size), got ", weight.dim(), "-dim tensor",
           weight.dim() == 1 ? " of size " + std::to_string(weight.size(0)) : std::string());
  FK_CHECK(weight.scalar_type() == input.scalar_type() || weight.scalar_type() == ScalarType::Float, op,
           "weight must be float32 or the input's dtype (", name_of(input.scalar_type()), "), got ",
           name_of(weight.scalar_type()));
  FK_CHECK(weight.stride(0) == 1 || weight.size(0) == 1, op, "weight must be contiguous, got stride ",
           weight.stride(0));
}

void check_residual(const char* op, const Tensor& residual, const Tensor& input) {
  FK_CHECK(residual.defined(), op, "residual is undefined");
  check_same_device(op, "residual", residual, input);
  FK_CHECK(residual.scalar_type() == input.scalar_type(), op, "residual must have the input's dtype (",
           name_of(input.scalar_type()), "), got ", name_of(residual.scalar_type()));
  bool same = residual.dim() == input.dim();
  for (int64_t d = 0; same && d < input.dim(); ++d) same = residual.size(d) == input.size(d);
  FK_CHECK(same, op, "residual must have the input's shape");
  FK_CHECK(residual.stride(-1) == 1 || residual.size(-1) == 1, op,
           "residual's last dim must be contiguous (stride 1), got stride ", residual.stride(-1));
}

void check_scalar_scale(const char* op, const char* name, const Tensor& scale, const Tensor& input) {
  FK_CHECK(scale.defined(), op, name, " is undefined");
  check_same_device(op, name, scale, input);
  FK_CHECK(scale.scalar_type() == ScalarType::Float, op, name, " must be float32, got ", name_of(scale.scalar_type()));
  FK_CHECK(scale.numel() == 1 && scale.dim() <= 1, op, name,
           " must hold exactly one element (shape [] or [1]), got ", scale.numel(), " elements in ", scale.dim(),
           " dims");
}

void check_fp8_dtype(const char* op, const char* name, ScalarType t, bool allow_int8) {
  const bool ok = t == ScalarType::Float8_e4m3fn || t == ScalarType::Float8_e4m3fnuz ||
                  (allow_int8 && t == ScalarType::Char);
  FK_CHECK(ok, op, name, " must be float8_e4m3fn or float8_e4m3fnuz", allow_int8 ? " or int8" : "", ", got ",
           name_of(t));
}

void check_epsilon(const char* op, double epsilon) {
  FK_CHECK(std::isfinite(epsilon) && epsilon >= 0.0, op, "epsilon must be finite and >= 0, got ", epsilon);
}

void check_group(const char* op, const Tensor& input, int64_t group_size, bool column_major_scales) {
  FK_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
           "group_size must be 32, 64 or 128, got ", group_size);
  FK_CHECK(input.size(-1) % group_size == 0, op, "the hidden size (input.size(-1) = ", input.size(-1),
           ") must be divisible by group_size = ", group_size);
  FK_CHECK(!column_major_scales || input.dim() == 2, op,
           "column_major_scales needs a 2-D input [tokens, hidden], got ", input.dim(), " dims");
}

// The leading dims of a [..., H] tensor as one strided row dimension. Returns a contiguous copy
// when the leading dims cannot be described by a single stride.
struct Rows {
  Tensor t;
  int64_t rows = 1;
  int64_t stride = 0;
};

Rows as_rows(const Tensor& t) {
  const int64_t n = t.dim();
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < n; ++d) rows *= t.size(d);
  // Walk the leading dims from the innermost outwards, skipping size-1 dims (their stride is
  // meaningless), and check that they nest like a contiguous block of rows.
  int64_t row_stride = -1;
  int64_t expected = -1;
  bool collapsible = true;
  for (int64_t d = n - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (row_stride < 0) {
      row_stride = t.stride(d);
      expected = row_stride * t.size(d);
    } else if (t.stride(d) == expected) {
      expected *= t.size(d);
    } else {
      collapsible = false;
      break;
    }
  }
  if (row_stride < 0) row_stride = t.size(-1);
  if (!collapsible) {
    Tensor c = torch::stable::contiguous(t);
    return {c, rows, c.size(-1)};
  }
  return {t, rows, row_stride};
}

std::vector<int64_t> leading_shape(const Tensor& t, int64_t last) {
  std::vector<int64_t> shape;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) shape.push_back(t.size(d));
  shape.push_back(last);
  return shape;
}

Tensor alloc(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(shape.data(), shape.size()), dtype,
                              std::nullopt, like.device());
}

struct Outputs {
  Tensor out;
  Tensor scales;
  Tensor residual_out;
};

struct Request {
  const Tensor* residual = nullptr;
  const Tensor* weight = nullptr;
  double epsilon = 0.0;
  QuantMode quant = QuantMode::kNone;
  ScalarType out_dtype = ScalarType::Float;
  const Tensor* scale = nullptr;
  const std::optional<Tensor>* scale_ub = nullptr;
  int64_t group_size = 0;
  bool column_major_scales = false;
  bool scale_ue8m0 = false;
};

void launch(const char* op, const RowOpParams& p, const Tensor& input) {
  if (p.rows == 0) return;
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

Outputs run(const char* op, const Tensor& input, const Request& r) {
  check_input(op, input);
  const ScalarType in_st = input.scalar_type();
  const int64_t H = input.size(-1);
  if (r.weight) check_weight(op, *r.weight, input);
  if (r.weight) check_epsilon(op, r.epsilon);
  if (r.residual) check_residual(op, *r.residual, input);
  if (r.scale) check_scalar_scale(op, "scale", *r.scale, input);
  if (r.scale_ub && r.scale_ub->has_value()) check_scalar_scale(op, "scale_ub", r.scale_ub->value(), input);
  if (r.quant == QuantMode::kPerGroup) check_group(op, input, r.group_size, r.column_major_scales);

  RowOpParams p;
  Rows in = as_rows(input);
  p.rows = in.rows;
  p.hidden = H;
  p.in_dtype = *to_dtype(in_st);
  p.input = in.t.const_data_ptr();
  p.input_row_stride = in.stride;

  Outputs o;
  const ScalarType out_st = r.quant == QuantMode::kNone ? in_st : r.out_dtype;
  o.out = alloc(leading_shape(input, H), out_st, input);
  p.out = o.out.mutable_data_ptr();
  p.out_dtype = *to_dtype(out_st);
  p.quant = r.quant;

  Rows res;
  if (r.residual) {
    res = as_rows(*r.residual);
    p.residual = res.t.const_data_ptr();
    p.residual_row_stride = res.stride;
    o.residual_out = alloc(leading_shape(input, H), in_st, input);
    p.residual_out = o.residual_out.mutable_data_ptr();
  }
  if (r.weight) {
    p.weight = r.weight->const_data_ptr();
    p.weight_dtype = *to_dtype(r.weight->scalar_type());
    p.epsilon = static_cast<float>(r.epsilon);
  }
  if (r.scale) p.scale = static_cast<const float*>(r.scale->const_data_ptr());
  if (r.scale_ub && r.scale_ub->has_value()) p.scale_ub = static_cast<const float*>(r.scale_ub->value().const_data_ptr());

  if (r.quant == QuantMode::kPerToken) {
    o.scales = alloc(leading_shape(input, 1), ScalarType::Float, input);
    p.scales = static_cast<float*>(o.scales.mutable_data_ptr());
    p.scale_row_stride = 1;
  } else if (r.quant == QuantMode::kPerGroup) {
    const int64_t groups = H / r.group_size;
    if (r.column_major_scales) {
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
    p.scales = static_cast<float*>(o.scales.mutable_data_ptr());
    p.group_size = r.group_size;
    p.scale_ue8m0 = r.scale_ue8m0;
  }
  launch(op, p, input);
  return o;
}

}  // namespace

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
                                                     bool scale_ue8m0, ScalarType fp8_dtype) {
  check_fp8_dtype("per_token_group_fp8_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
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
                                                          bool scale_ue8m0, ScalarType fp8_dtype) {
  check_fp8_dtype("rms_norm_per_token_group_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
  r.scale_ue8m0 = scale_ue8m0;
  Outputs o = run("rms_norm_per_token_group_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_per_token_group_quant(Tensor input, Tensor residual,
                                                                            Tensor weight, double epsilon,
                                                                            int64_t group_size,
                                                                            bool column_major_scales,
                                                                            bool scale_ue8m0, ScalarType fp8_dtype) {
  check_fp8_dtype("fused_add_rms_norm_per_token_group_quant", "fp8_dtype", fp8_dtype, false);
  Request r;
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  r.quant = QuantMode::kPerGroup;
  r.out_dtype = fp8_dtype;
  r.group_size = group_size;
  r.column_major_scales = column_major_scales;
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

}  // namespace fusion_kernels
