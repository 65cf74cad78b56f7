// SPDX-License-Identifier: Apache-2.0
// The microscaling quant ops (MXFP8, MXFP4, NVFP4), unfused and fused with RMSNorm, as C++
// functions over stable-ABI tensors (host bodies in mx_ops.cpp, schemas in bindings.cpp). The
// spec is fusion_kernels/microscaling.py.
//
// Arguments shared by the ops:
// * scale_mode (MX formats): "floor", "rceil", "ceil" or "even" (torchao's ScaleCalculationMode
//   values, microscaling.mx_block_scale);
// * swizzled_scales: false: scales row-major [..., H / block]; true: the 128x4 tile layout of
//   block-scaled GEMMs over the T = prod(input.shape[:-1]) rows, [32 * ceil(T / 128),
//   16 * ceil(H / block / 4)], padding bytes 0 (microscaling.swizzle_scales_128x4);
// * global_scale (NVFP4): float32, one element; global_scale_is_multiplier: false: torchao's
//   divisor convention (amax / (448 * 6)), true: vLLM / FlashInfer's multiplier (448 * 6 / amax).
// Outputs: MXFP8 q in fp8_dtype [..., H]; MXFP4 / NVFP4 q packed FP4 as uint8 [..., H / 2]
// (element 2i in the low nibble of byte i); scales float8_e8m0fnu (MX) or float8_e4m3fn (NVFP4);
// the fused_add ops return residual_out = input + residual (in the input dtype) last.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <string>
#include <tuple>

namespace fusion_kernels {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

std::tuple<Tensor, Tensor> mxfp8_quant(Tensor input, ScalarType fp8_dtype, std::string scale_mode,
                                       bool swizzled_scales);
std::tuple<Tensor, Tensor> mxfp4_quant(Tensor input, std::string scale_mode, bool swizzled_scales);
std::tuple<Tensor, Tensor> nvfp4_quant(Tensor input, Tensor global_scale, bool global_scale_is_multiplier,
                                       bool swizzled_scales);

std::tuple<Tensor, Tensor> rms_norm_mxfp8_quant(Tensor input, Tensor weight, double epsilon, ScalarType fp8_dtype,
                                                std::string scale_mode, bool swizzled_scales);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_mxfp8_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, ScalarType fp8_dtype,
                                                                  std::string scale_mode, bool swizzled_scales);
std::tuple<Tensor, Tensor> rms_norm_mxfp4_quant(Tensor input, Tensor weight, double epsilon, std::string scale_mode,
                                                bool swizzled_scales);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_mxfp4_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, std::string scale_mode,
                                                                  bool swizzled_scales);
std::tuple<Tensor, Tensor> rms_norm_nvfp4_quant(Tensor input, Tensor weight, double epsilon, Tensor global_scale,
                                                bool global_scale_is_multiplier, bool swizzled_scales);
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_nvfp4_quant(Tensor input, Tensor residual, Tensor weight,
                                                                  double epsilon, Tensor global_scale,
                                                                  bool global_scale_is_multiplier,
                                                                  bool swizzled_scales);

}  // namespace fusion_kernels
