// SPDX-License-Identifier: Apache-2.0
// What a microscaling quant op asks of a kernel (CPU: cpu/mx_cpu.cpp, CUDA/HIP: cuda/mx_cuda.cu):
// raw pointers and sizes, filled by mx_ops.cpp after checking the arguments. No torch.
#pragma once

#include <cstdint>

#include "microscaling.h"
#include "row_op.h"

namespace fusion_kernels {

enum class MxKind : int32_t { kMxfp8E4m3, kMxfp8E5m2, kMxfp4, kNvfp4 };

struct MxQuantParams {
  int64_t rows = 0;
  int64_t hidden = 0;  // a multiple of the block size (32, or 16 for NVFP4)
  DType in_dtype = DType::kFloat32;  // kFloat32, kFloat16 or kBFloat16

  const void* input = nullptr;  // [rows, hidden], last dim contiguous
  int64_t input_row_stride = 0;  // in elements

  // The norm stage, as the row op (row_op.h) computes it: optional residual add, then RMSNorm
  // rounded to the input dtype where Hugging Face rounds. weight nullptr: no norm (the input is
  // quantized as it is).
  const void* residual = nullptr;
  int64_t residual_row_stride = 0;
  void* residual_out = nullptr;  // contiguous [rows, hidden], set iff residual
  const void* weight = nullptr;
  DType weight_dtype = DType::kFloat32;
  float epsilon = 0.0f;

  MxKind kind = MxKind::kMxfp8E4m3;
  mx::ScaleMode scale_mode = mx::ScaleMode::kFloor;  // MX formats
  const float* global_scale = nullptr;  // NVFP4: one element
  bool global_scale_is_multiplier = false;  // NVFP4: vLLM / FlashInfer convention

  void* out = nullptr;  // contiguous: [rows, hidden] fp8, or [rows, hidden / 2] packed FP4
  uint8_t* scales = nullptr;  // row-major [rows, hidden / block], or the 128x4 swizzled buffer
  bool swizzled = false;  // (already zero-filled, padding included, when swizzled)
};

inline int64_t mx_block_size(MxKind k) { return k == MxKind::kNvfp4 ? mx::kNvfp4Block : mx::kMxBlock; }

}  // namespace fusion_kernels
