// SPDX-License-Identifier: Apache-2.0
// CPU implementation of the row op: plain C++, parallel over rows, fp32 accumulation, the
// rounding points of the spec (fusion_kernels/reference.py).
#include "cpu/row_op_cpu.h"

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Float8_e4m3fn.h>
#include <torch/headeronly/util/Float8_e4m3fnuz.h>
#include <torch/headeronly/util/Half.h>

#include <cmath>
#include <vector>

#include "per_tensor.h"
#include "scale_rule.h"

namespace fusion_kernels {
namespace {

using torch::headeronly::BFloat16;
using torch::headeronly::Float8_e4m3fn;
using torch::headeronly::Float8_e4m3fnuz;
using torch::headeronly::Half;

template <typename T>
inline float round_to(float v) {
  return static_cast<float>(T(v));
}
template <>
inline float round_to<float>(float v) {
  return v;
}

inline float load_as_float(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kFloat16: return static_cast<float>(static_cast<const Half*>(base)[i]);
    case DType::kBFloat16: return static_cast<float>(static_cast<const BFloat16*>(base)[i]);
    default: return 0.0f;
  }
}

// NaN-propagating helpers: std::min/std::max would silently drop a NaN operand.
inline float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }
inline float clamp_keep_nan(float v, float lo, float hi) { return v > hi ? hi : (v < lo ? lo : v); }

// The CPU's arithmetic for the scale rule (scale_rule.h): IEEE division, and torch's
// round-to-nearest-even conversions to bf16 and fp16.
struct CpuScaleArith {
  static constexpr bool kSubnormalScales = true;
  static float div(float a, const ScaleRule& r) { return a / r.divisor; }
  static float round_to(float s, DType t) {
    return t == DType::kBFloat16 ? static_cast<float>(BFloat16(s)) : static_cast<float>(Half(s));
  }
};

inline float scale_of(float amax, const ScaleRule& rule) { return dynamic_scale<CpuScaleArith>(amax, rule); }

// The value quantized: y * (1 / s), rounded to T first where the rule asks (ScaleRule::round_quotient).
template <typename T>
inline float quotient(float y, float inv_s, bool round) {
  const float v = y * inv_s;
  return round ? round_to<T>(v) : v;
}

template <DType OUT>
inline void store_quant(void* out, int64_t i, float v, float qmax) {
  if constexpr (OUT == DType::kInt8) {
    float c = clamp_keep_nan(v, kInt8Min, kInt8Max);
    static_cast<int8_t*>(out)[i] = (c != c) ? int8_t(0) : static_cast<int8_t>(std::nearbyint(c));
  } else if constexpr (OUT == DType::kFp8E4m3fn) {
    static_cast<Float8_e4m3fn*>(out)[i] = Float8_e4m3fn(clamp_keep_nan(v, -qmax, qmax));
  } else {
    static_cast<Float8_e4m3fnuz*>(out)[i] = Float8_e4m3fnuz(clamp_keep_nan(v, -qmax, qmax));
  }
}

template <typename T>
inline void store_plain(void* out, int64_t i, float v) {
  static_cast<T*>(out)[i] = T(v);
}

template <typename T, DType OUT>
void run(const RowOpParams& p) {
  const int64_t H = p.hidden;
  const float qmax = quant_max(OUT);
  const float static_inv_scale = (p.quant == QuantMode::kStatic) ? 1.0f / *p.scale : 1.0f;
  const bool has_ub = p.scale_ub != nullptr;
  const float ub = has_ub ? *p.scale_ub : 0.0f;
  const bool rq = p.rule.round_quotient;
  const int64_t grain = std::max<int64_t>(1, 16384 / H);

  torch::stable::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> y(H);
    for (int64_t row = begin; row < end; ++row) {
      const T* x = static_cast<const T*>(p.input) + row * p.input_row_stride;
      if (p.residual != nullptr) {
        const T* res = static_cast<const T*>(p.residual) + row * p.residual_row_stride;
        T* res_out = static_cast<T*>(p.residual_out) + row * H;
        for (int64_t i = 0; i < H; ++i) {
          const T r = T(static_cast<float>(x[i]) + static_cast<float>(res[i]));
          res_out[i] = r;
          y[i] = static_cast<float>(r);
        }
      } else {
        for (int64_t i = 0; i < H; ++i) y[i] = static_cast<float>(x[i]);
      }

      if (p.weight != nullptr) {
        // Eight partial sums: a fixed order per H, so a row's result never depends on the batch.
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= H; i += 8)
          for (int k = 0; k < 8; ++k) acc[k] += y[i + k] * y[i + k];
        for (; i < H; ++i) acc[i % 8] += y[i] * y[i];
        const float sumsq = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        const float inv = 1.0f / std::sqrt(sumsq / static_cast<float>(H) + p.epsilon);
        for (int64_t j = 0; j < H; ++j) {
          const float normed = round_to<T>(y[j] * inv);
          y[j] = round_to<T>(normed * load_as_float(p.weight, p.weight_dtype, j));
        }
      }

      if (p.norm_out != nullptr)
        for (int64_t j = 0; j < H; ++j) store_plain<T>(p.norm_out, row * H + j, y[j]);
      if constexpr (OUT == DType::kFloat32 || OUT == DType::kFloat16 || OUT == DType::kBFloat16) {
        for (int64_t j = 0; j < H; ++j) store_plain<T>(p.out, row * H + j, y[j]);
      } else {
        if (p.quant == QuantMode::kStatic) {
          for (int64_t j = 0; j < H; ++j) store_quant<OUT>(p.out, row * H + j, y[j] * static_inv_scale, qmax);
        } else if (p.quant == QuantMode::kPerToken) {
          float amax = 0.0f;
          for (int64_t j = 0; j < H; ++j) amax = nan_max(std::fabs(y[j]), amax);
          const float a = (has_ub && amax > ub) ? ub : amax;
          const float s = scale_of(a, p.rule);
          p.scales[row * p.scale_row_stride] = s;
          if (p.out == nullptr) continue;  // the scales only (per_tensor.h, pass 1)
          const float inv_s = 1.0f / s;
          for (int64_t j = 0; j < H; ++j) store_quant<OUT>(p.out, row * H + j, quotient<T>(y[j], inv_s, rq), qmax);
        } else {  // kPerGroup
          const int64_t G = p.group_size;
          for (int64_t g = 0; g < H / G; ++g) {
            float amax = 0.0f;
            for (int64_t j = g * G; j < (g + 1) * G; ++j) amax = nan_max(std::fabs(y[j]), amax);
            const float s = scale_of(amax, p.rule);
            store_group_scale(p, row, g, s);
            const float inv_s = 1.0f / s;
            for (int64_t j = g * G; j < (g + 1) * G; ++j)
              store_quant<OUT>(p.out, row * H + j, quotient<T>(y[j], inv_s, rq), qmax);
          }
          zero_group_scale_padding(p, row, 0, 1);
        }
      }
    }
  });
}

template <typename T>
void dispatch_out(const RowOpParams& p) {
  switch (p.quant == QuantMode::kNone ? p.in_dtype : p.out_dtype) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16: return run<T, DType::kFloat32>(p);  // plain store in T
    case DType::kFp8E4m3fn: return run<T, DType::kFp8E4m3fn>(p);
    case DType::kFp8E4m3fnuz: return run<T, DType::kFp8E4m3fnuz>(p);
    case DType::kInt8: return run<T, DType::kInt8>(p);
  }
}

// Pass 2 of the per-tensor quant: the tensor's absmax from the rows', then its scale.
void tensor_scale_cpu(const float* row_absmax, int64_t rows, float* scale, const ScaleRule& rule, DType) {
  float amax = 0.0f;
  for (int64_t i = 0; i < rows; ++i) amax = nan_max(row_absmax[i], amax);
  *scale = scale_of(amax, rule);
}

}  // namespace

void row_op_cpu(const RowOpParams& p) {
  if (p.quant == QuantMode::kPerTensor) return run_per_tensor(p, row_op_cpu, tensor_scale_cpu);
  if (p.rows == 0) return;
  switch (p.in_dtype) {
    case DType::kFloat32: return dispatch_out<float>(p);
    case DType::kFloat16: return dispatch_out<Half>(p);
    case DType::kBFloat16: return dispatch_out<BFloat16>(p);
    default: return;
  }
}

}  // namespace fusion_kernels
