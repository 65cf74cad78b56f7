// SPDX-License-Identifier: Apache-2.0
// CPU kernels of the microscaling quant ops: plain C++, parallel over rows, the block scales and
// conversions of microscaling.h (the spec is fusion_kernels/microscaling.py, bit for bit).
//
// The fused ops' norm stage is the row op's own CPU code (row_op_cpu with QuantMode::kNone): each
// chunk of rows is normalised into a buffer in the input dtype, exactly as rms_norm /
// fused_add_rms_norm write it, and quantized from there. So a fused op equals rms_norm (or
// fused_add_rms_norm) followed by the unfused quant op, bit for bit.
#include "cpu/mx_cpu.h"

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Float8_e4m3fn.h>
#include <torch/headeronly/util/Float8_e5m2.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/row_op_cpu.h"

namespace fusion_kernels {
namespace {

using torch::headeronly::BFloat16;
using torch::headeronly::Float8_e4m3fn;
using torch::headeronly::Float8_e5m2;
using torch::headeronly::Half;

// Where scale `b` of row `row` goes: row-major [rows, cols] or the 128x4 swizzled buffer.
inline int64_t scale_offset(const MxQuantParams& p, int64_t row, int64_t b, int64_t cols) {
  return p.swizzled ? mx::swizzled_offset(row, b, (cols + 3) / 4) : row * cols + b;
}

// Quantizes one row (`x`, H elements of T) into row `row` of the outputs.
template <typename T>
void quantize_row(const MxQuantParams& p, const T* x, int64_t row, std::vector<float>& v) {
  const int64_t H = p.hidden;
  const int64_t block = mx_block_size(p.kind);
  const int64_t cols = H / block;
  for (int64_t i = 0; i < H; ++i) v[i] = static_cast<float>(x[i]);

  const float g = p.kind == MxKind::kNvfp4 ? *p.global_scale : 0.0f;
  const mx::ElemFormat elem = p.kind == MxKind::kMxfp8E4m3   ? mx::ElemFormat::kE4m3
                              : p.kind == MxKind::kMxfp8E5m2 ? mx::ElemFormat::kE5m2
                                                             : mx::ElemFormat::kE2m1;
  for (int64_t b = 0; b < cols; ++b) {
    float* blk = v.data() + b * block;
    float amax = 0.0f;
    for (int64_t j = 0; j < block; ++j) amax = mx::nan_max(std::fabs(blk[j]), amax);
    uint8_t byte;
    if (p.kind == MxKind::kNvfp4) {
      const mx::Nvfp4Block s = mx::nvfp4_block(amax, g, p.global_scale_is_multiplier);
      byte = s.scale;
      for (int64_t j = 0; j < block; ++j)
        blk[j] = mx::clamp_keep_nan(mx::mul_by_factor(blk[j], s.factor), -mx::kE2m1Max, mx::kE2m1Max);
    } else {
      byte = mx::mx_block_scale(amax, elem, p.scale_mode);
      const float factor = mx::mx_block_factor(byte, p.scale_mode);
      for (int64_t j = 0; j < block; ++j) blk[j] = mx::mx_scaled(blk[j], factor, p.scale_mode);
    }
    p.scales[scale_offset(p, row, b, cols)] = byte;
  }

  if (p.kind == MxKind::kMxfp8E4m3) {
    Float8_e4m3fn* out = static_cast<Float8_e4m3fn*>(p.out) + row * H;
    for (int64_t i = 0; i < H; ++i) out[i] = Float8_e4m3fn(mx::clamp_keep_nan(v[i], -448.0f, 448.0f));
  } else if (p.kind == MxKind::kMxfp8E5m2) {
    Float8_e5m2* out = static_cast<Float8_e5m2*>(p.out) + row * H;
    for (int64_t i = 0; i < H; ++i) out[i] = Float8_e5m2(mx::clamp_keep_nan(v[i], -57344.0f, 57344.0f));
  } else {
    // Packed FP4: element 2i in the low nibble of byte i, 2i + 1 in the high nibble.
    uint8_t* out = static_cast<uint8_t*>(p.out) + row * (H / 2);
    for (int64_t i = 0; i < H / 2; ++i)
      out[i] = static_cast<uint8_t>((mx::f32_to_e2m1(v[2 * i + 1]) << 4) | mx::f32_to_e2m1(v[2 * i]));
  }
}

template <typename T>
void run(const MxQuantParams& p) {
  const int64_t H = p.hidden;
  const int64_t grain = std::max<int64_t>(1, 16384 / H);
  const int64_t chunk = std::max<int64_t>(1, 8192 / H);  // rows normalised per buffer fill

  torch::stable::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> v(H);
    std::vector<T> y;
    for (int64_t r0 = begin; r0 < end; r0 += chunk) {
      const int64_t r1 = std::min(end, r0 + chunk);
      const T* src = static_cast<const T*>(p.input) + r0 * p.input_row_stride;
      int64_t src_stride = p.input_row_stride;
      if (p.weight != nullptr) {
        // The norm stage of these rows: the row op with no quantization, into y.
        y.resize(static_cast<size_t>((r1 - r0) * H));
        RowOpParams rp;
        rp.rows = r1 - r0;
        rp.hidden = H;
        rp.in_dtype = p.in_dtype;
        rp.input = src;
        rp.input_row_stride = p.input_row_stride;
        if (p.residual != nullptr) {
          rp.residual = static_cast<const T*>(p.residual) + r0 * p.residual_row_stride;
          rp.residual_row_stride = p.residual_row_stride;
          rp.residual_out = static_cast<T*>(p.residual_out) + r0 * H;
        }
        rp.weight = p.weight;
        rp.weight_dtype = p.weight_dtype;
        rp.epsilon = p.epsilon;
        rp.quant = QuantMode::kNone;
        rp.out_dtype = p.in_dtype;
        rp.out = y.data();
        row_op_cpu(rp);  // inside this parallel region its parallel_for runs inline
        src = y.data();
        src_stride = H;
      }
      for (int64_t row = r0; row < r1; ++row) quantize_row<T>(p, src + (row - r0) * src_stride, row, v);
    }
  });
}

}  // namespace

void mx_quant_cpu(const MxQuantParams& p) {
  if (p.rows == 0) return;
  switch (p.in_dtype) {
    case DType::kFloat32: return run<float>(p);
    case DType::kFloat16: return run<Half>(p);
    case DType::kBFloat16: return run<BFloat16>(p);
    default: return;
  }
}

}  // namespace fusion_kernels
