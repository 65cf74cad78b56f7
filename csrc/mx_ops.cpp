// SPDX-License-Identifier: Apache-2.0
// Host bodies of the microscaling quant ops (mx_ops.h): argument checks (checks.h, messages
// "fusion_kernels.<op>: <argument> ..."), output allocation, and the hand-off to the CPU kernel
// (cpu/mx_cpu.cpp) or the CUDA / HIP kernel (cuda/mx_kernels.cuh), which give the same bytes.
#include "mx_ops.h"

#include <torch/csrc/stable/ops.h>

#include <cstring>
#include <optional>
#include <vector>

#include "checks.h"
#include "cpu/mx_cpu.h"
#include "microscaling.h"
#include "row_op.h"
#include "tensor_rows.h"
#ifdef FK_WITH_CUDA
#include <torch/csrc/stable/accelerator.h>

#include "cuda/mx_cuda.h"
#endif

namespace fusion_kernels {
namespace {

mx::ScaleMode parse_scale_mode(const char* op, const std::string& s) {
  if (s == "floor") return mx::ScaleMode::kFloor;
  if (s == "rceil") return mx::ScaleMode::kRceil;
  if (s == "ceil") return mx::ScaleMode::kCeil;
  if (s == "even") return mx::ScaleMode::kEven;
  fail(op, "scale_mode must be one of 'floor', 'rceil', 'ceil', 'even', got '", s, "'");
}

MxKind mxfp8_kind(const char* op, ScalarType fp8_dtype) {
  if (fp8_dtype == ScalarType::Float8_e4m3fn) return MxKind::kMxfp8E4m3;
  if (fp8_dtype == ScalarType::Float8_e5m2) return MxKind::kMxfp8E5m2;
  fail(op, "fp8_dtype must be float8_e4m3fn or float8_e5m2, got ", name_of(fp8_dtype));
}

struct MxRequest {
  MxKind kind = MxKind::kMxfp8E4m3;
  mx::ScaleMode scale_mode = mx::ScaleMode::kFloor;
  const Tensor* global_scale = nullptr;
  bool global_scale_is_multiplier = false;
  bool swizzled = false;
  const Tensor* residual = nullptr;
  const Tensor* weight = nullptr;
  double epsilon = 0.0;
};

struct MxOutputs {
  Tensor out;
  Tensor scales;
  Tensor residual_out;
};

MxOutputs run_mx(const char* op, const Tensor& input, const MxRequest& r) {
  check_input(op, input);
  const int64_t H = input.size(-1);
  const int64_t block = mx_block_size(r.kind);
  if (H % block != 0)
    fail(op, "the hidden size (input.size(-1) = ", H, ") must be divisible by the block size ", block);
  if (r.weight) check_weight(op, *r.weight, input);
  if (r.weight) check_epsilon(op, r.epsilon);
  if (r.residual) check_residual(op, *r.residual, input);
  if (r.global_scale) check_scalar_scale(op, "global_scale", *r.global_scale, input);
  if (!input.is_cpu() && !input.is_cuda()) fail(op, "input must be on the CPU or a CUDA / ROCm GPU");

  MxQuantParams p;
  const NormInputs bound = bind_norm_inputs(p, input, r.residual, r.weight, r.epsilon);
  const Rows& in = bound.in;
  p.kind = r.kind;
  p.scale_mode = r.scale_mode;
  p.swizzled = r.swizzled;

  MxOutputs o;
  o.residual_out = bound.residual_out;
  const bool fp4 = r.kind == MxKind::kMxfp4 || r.kind == MxKind::kNvfp4;
  const ScalarType out_st = r.kind == MxKind::kMxfp8E4m3   ? ScalarType::Float8_e4m3fn
                            : r.kind == MxKind::kMxfp8E5m2 ? ScalarType::Float8_e5m2
                                                           : ScalarType::Byte;
  o.out = alloc(leading_shape(input, fp4 ? H / 2 : H), out_st, input);
  p.out = o.out.mutable_data_ptr();

  const ScalarType scale_st = r.kind == MxKind::kNvfp4 ? ScalarType::Float8_e4m3fn : ScalarType::Float8_e8m0fnu;
  const int64_t cols = H / block;
  if (r.swizzled) {
    const int64_t row_tiles = (in.rows + 127) / 128;
    const int64_t col_tiles = (cols + 3) / 4;
    o.scales = alloc({32 * row_tiles, 16 * col_tiles}, scale_st, input);
    // The padding of the tiles is 0 (as swizzle_scales_128x4 writes it): zero-filled here on the
    // CPU, written by the kernel on a GPU.
    if (input.is_cpu()) std::memset(o.scales.mutable_data_ptr(), 0, static_cast<size_t>(512 * row_tiles * col_tiles));
  } else {
    o.scales = alloc(leading_shape(input, cols), scale_st, input);
  }
  p.scales = static_cast<uint8_t*>(o.scales.mutable_data_ptr());

  if (r.global_scale) {
    p.global_scale = static_cast<const float*>(r.global_scale->const_data_ptr());
    p.global_scale_is_multiplier = r.global_scale_is_multiplier;
  }
  if (input.is_cuda()) {
#ifdef FK_WITH_CUDA
    torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
    mx_quant_cuda(p, input.get_device_index());
#else
    fail(op, "this build of the library has no CUDA kernels");
#endif
  } else {
    mx_quant_cpu(p);
  }
  return o;
}

MxRequest mx_request(const char* op, MxKind kind, const std::string& scale_mode, bool swizzled) {
  MxRequest r;
  r.kind = kind;
  r.scale_mode = parse_scale_mode(op, scale_mode);
  r.swizzled = swizzled;
  return r;
}

MxRequest nvfp4_request(const Tensor& global_scale, bool multiplier, bool swizzled) {
  MxRequest r;
  r.kind = MxKind::kNvfp4;
  r.global_scale = &global_scale;
  r.global_scale_is_multiplier = multiplier;
  r.swizzled = swizzled;
  return r;
}

}  // namespace

std::tuple<Tensor, Tensor> mxfp8_quant(Tensor input, ScalarType fp8_dtype, std::string scale_mode,
                                       bool swizzled_scales) {
  const char* op = "mxfp8_quant";
  MxRequest r = mx_request(op, mxfp8_kind(op, fp8_dtype), scale_mode, swizzled_scales);
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> mxfp4_quant(Tensor input, std::string scale_mode, bool swizzled_scales) {
  const char* op = "mxfp4_quant";
  MxRequest r = mx_request(op, MxKind::kMxfp4, scale_mode, swizzled_scales);
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> nvfp4_quant(Tensor input, Tensor global_scale, bool global_scale_is_multiplier,
                                       bool swizzled_scales) {
  MxRequest r = nvfp4_request(global_scale, global_scale_is_multiplier, swizzled_scales);
  MxOutputs o = run_mx("nvfp4_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor> rms_norm_mxfp8_quant(Tensor input, Tensor weight, double epsilon, ScalarType fp8_dtype,
                                                std::string scale_mode, bool swizzled_scales) {
  const char* op = "rms_norm_mxfp8_quant";
  MxRequest r = mx_request(op, mxfp8_kind(op, fp8_dtype), scale_mode, swizzled_scales);
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_mxfp8_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, ScalarType fp8_dtype,
                                                                  std::string scale_mode, bool swizzled_scales) {
  const char* op = "fused_add_rms_norm_mxfp8_quant";
  MxRequest r = mx_request(op, mxfp8_kind(op, fp8_dtype), scale_mode, swizzled_scales);
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales, o.residual_out};
}

std::tuple<Tensor, Tensor> rms_norm_mxfp4_quant(Tensor input, Tensor weight, double epsilon, std::string scale_mode,
                                                bool swizzled_scales) {
  const char* op = "rms_norm_mxfp4_quant";
  MxRequest r = mx_request(op, MxKind::kMxfp4, scale_mode, swizzled_scales);
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_mxfp4_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, std::string scale_mode,
                                                                  bool swizzled_scales) {
  const char* op = "fused_add_rms_norm_mxfp4_quant";
  MxRequest r = mx_request(op, MxKind::kMxfp4, scale_mode, swizzled_scales);
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx(op, input, r);
  return {o.out, o.scales, o.residual_out};
}

std::tuple<Tensor, Tensor> rms_norm_nvfp4_quant(Tensor input, Tensor weight, double epsilon, Tensor global_scale,
                                                bool global_scale_is_multiplier, bool swizzled_scales) {
  MxRequest r = nvfp4_request(global_scale, global_scale_is_multiplier, swizzled_scales);
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx("rms_norm_nvfp4_quant", input, r);
  return {o.out, o.scales};
}

std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_nvfp4_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, Tensor global_scale,
                                                                  bool global_scale_is_multiplier,
                                                                  bool swizzled_scales) {
  MxRequest r = nvfp4_request(global_scale, global_scale_is_multiplier, swizzled_scales);
  r.residual = &residual;
  r.weight = &weight;
  r.epsilon = epsilon;
  MxOutputs o = run_mx("fused_add_rms_norm_nvfp4_quant", input, r);
  return {o.out, o.scales, o.residual_out};
}

}  // namespace fusion_kernels
