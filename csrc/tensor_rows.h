// SPDX-License-Identifier: Apache-2.0
// Tensor plumbing shared by the ops' host bodies (ops.cpp, rule_ops.cpp, mx_ops.cpp): dtypes as
// the kernels' DType, a [..., H] tensor as strided rows, output allocation.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "row_op.h"

namespace fusion_kernels {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

inline std::optional<DType> to_dtype(ScalarType t) {
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

// The leading dims of a [..., H] tensor as one strided row dimension. Returns a contiguous copy
// when the leading dims cannot be described by a single stride.
struct Rows {
  Tensor t;
  int64_t rows = 1;
  int64_t stride = 0;
};

inline Rows as_rows(const Tensor& t) {
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

inline std::vector<int64_t> leading_shape(const Tensor& t, int64_t last) {
  std::vector<int64_t> shape;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) shape.push_back(t.size(d));
  shape.push_back(last);
  return shape;
}

inline Tensor alloc(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(shape.data(), shape.size()), dtype,
                              std::nullopt, like.device());
}

// The tensors of a [residual add ->] [RMSNorm ->] request bound to a params struct (RowOpParams,
// MxQuantParams: the same field names): the input's rows, the residual's and the new residual
// (allocated here), the norm weight and eps. Holds what the pointers point into (a contiguous
// copy of rows that no stride describes) until the kernel has been queued.
struct NormInputs {
  Rows in;
  Rows res;
  Tensor residual_out;  // set iff a residual is given
};

template <typename Params>
NormInputs bind_norm_inputs(Params& p, const Tensor& input, const Tensor* residual, const Tensor* weight,
                            double epsilon) {
  NormInputs n;
  n.in = as_rows(input);
  p.rows = n.in.rows;
  p.hidden = input.size(-1);
  p.in_dtype = *to_dtype(input.scalar_type());
  p.input = n.in.t.const_data_ptr();
  p.input_row_stride = n.in.stride;
  if (residual) {
    n.res = as_rows(*residual);
    p.residual = n.res.t.const_data_ptr();
    p.residual_row_stride = n.res.stride;
    n.residual_out = alloc(leading_shape(input, input.size(-1)), input.scalar_type(), input);
    p.residual_out = n.residual_out.mutable_data_ptr();
  }
  if (weight) {
    p.weight = weight->const_data_ptr();
    p.weight_dtype = *to_dtype(weight->scalar_type());
    p.epsilon = static_cast<float>(epsilon);
  }
  return n;
}

}  // namespace fusion_kernels
