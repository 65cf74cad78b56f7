// SPDX-License-Identifier: Apache-2.0
// The ops' argument checks (checks.h).
#include "checks.h"

#include <cmath>
#include <string>

#include "row_op.h"

namespace fusion_kernels {

// Dtypes in messages as torch spells them (torch.float16, not c10's Half; torch.int8, not Char).
const char* name_of(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::Float8_e4m3fn: return "torch.float8_e4m3fn";
    case ScalarType::Float8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    case ScalarType::Float8_e5m2: return "torch.float8_e5m2";
    case ScalarType::Float8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    case ScalarType::Float8_e8m0fnu: return "torch.float8_e8m0fnu";
    default: return torch::headeronly::toString(t);
  }
}

namespace {

#define FK_CHECK(cond, op, ...) \
  do {                          \
    if (!(cond)) fail(op, __VA_ARGS__); \
  } while (0)

std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "a device other than cpu/cuda";
}

bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cpu() == b.is_cpu() && a.is_cuda() == b.is_cuda() &&
         (a.is_cpu() || a.get_device_index() == b.get_device_index());
}

void check_same_device(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  FK_CHECK(same_device(t, input), op, name, " must be on the input's device (", device_str(input), "), got ",
           device_str(t));
}

}  // namespace

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

void check_group(const char* op, const Tensor& input, int64_t group_size, bool column_major_scales,
                 bool tma_aligned_scales) {
  FK_CHECK(!tma_aligned_scales || column_major_scales, op, "tma_aligned_scales needs column_major_scales");
  FK_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
           "group_size must be 32, 64 or 128, got ", group_size);
  FK_CHECK(input.size(-1) % group_size == 0, op, "the hidden size (input.size(-1) = ", input.size(-1),
           ") must be divisible by group_size = ", group_size);
  FK_CHECK(!column_major_scales || input.dim() == 2, op,
           "column_major_scales needs a 2-D input [tokens, hidden], got ", input.dim(), " dims");
}

void check_rule(const char* op, ScalarType quant_dtype, int64_t group_size, double divisor, double absmax_floor,
                double scale_floor, double zero_scale, ScalarType scale_dtype, bool round_quotient) {
  check_fp8_dtype(op, "quant_dtype", quant_dtype, true);
  FK_CHECK(group_size == -1 || group_size == 0 || group_size == 32 || group_size == 64 || group_size == 128, op,
           "group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 or 128, got ", group_size);
  const float d = to_float32(divisor);
  FK_CHECK(std::isfinite(d) && d > 0.0f, op, "divisor must be finite and > 0 (as float32), got ", divisor);
  const char* names[] = {"absmax_floor", "scale_floor", "zero_scale"};
  const double values[] = {absmax_floor, scale_floor, zero_scale};
  for (int i = 0; i < 3; ++i) {
    const float f = to_float32(values[i]);
    FK_CHECK(std::isfinite(f) && f >= 0.0f, op, names[i], " must be finite and >= 0 (as float32; 0 turns it off), got ",
             values[i]);
  }
  FK_CHECK(scale_dtype == ScalarType::Float || scale_dtype == ScalarType::BFloat16 || scale_dtype == ScalarType::Half,
           op, "scale_dtype must be float32, bfloat16 or float16, got ", name_of(scale_dtype));
  FK_CHECK(!round_quotient || group_size >= 0, op,
           "round_quotient needs one scale per row or per group (group_size >= 0), got group_size ", group_size);
}

}  // namespace fusion_kernels
