// SPDX-License-Identifier: Apache-2.0
// What an op asks of the row op (Request) and what it gets back (Outputs), for the ops' host
// bodies in ops.cpp and rule_ops.cpp: run() checks the arguments, allocates the outputs, fills
// RowOpParams and hands them to the CPU or CUDA implementation.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>

#include "row_op.h"

namespace fusion_kernels {
namespace detail {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

struct Outputs {
  Tensor out;
  Tensor scales;
  Tensor residual_out;
  Tensor norm_out;
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
  bool packed_ue8m0_scales = false;
  bool tma_aligned_scales = false;  // column-major scales, the columns padded to 4 rows (16 bytes)  // the _packed ops: UE8M0 scales in DeepGEMM's packed layout
  const ScaleRule* rule = nullptr;  // the rule ops' rule; else the fixed rule of the quant mode
  bool norm_out = false;  // the norm-output variants: y returned too
};

Outputs run(const char* op, const Tensor& input, const Request& r);

// A rule op's request: its rule checked and converted (the floats as float32), per tensor
// (group_size -1), per row (0) or per group. `rule` must outlive the request.
Request rule_request(const char* op, ScaleRule& rule, ScalarType quant_dtype, int64_t group_size, double divisor,
                     double absmax_floor, double scale_floor, double zero_scale, ScalarType scale_dtype,
                     bool scale_ue8m0, bool round_quotient);

}  // namespace detail
}  // namespace fusion_kernels
