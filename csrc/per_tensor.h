// SPDX-License-Identifier: Apache-2.0
// Dynamic per-tensor quantization (QuantMode::kPerTensor) as a composition of the row op, the
// same on every device: one scale needs the absmax of every row before any row is quantized.
//   1. every row's [residual add ->] [RMSNorm ->] absmax, with q not written (a per-token pass
//      whose rule is the identity); the new residual and the optional norm output are written
//      here;
//   2. the absmax of the tensor (a max: exact, so independent of how the rows were split) and
//      its scale by the rule; with no rows the absmax is 0;
//   3. a static quant of every row with that scale, the norm recomputed from the input (or from
//      the new residual, which is what the norm reads), bit for bit as in pass 1.
// Reads the input twice and writes q once: less than the unfused norm + quant, which write and
// read back the normalised tensor.
#pragma once

#include "row_op.h"

namespace fusion_kernels {

// run_rows(params): the device's row op for rows > 0. tensor_scale(row_absmax, rows, scale_out,
// rule, out_dtype): pass 2 on the device.
template <typename RunRows, typename TensorScale>
void run_per_tensor(const RowOpParams& p, RunRows&& run_rows, TensorScale&& tensor_scale) {
  if (p.rows > 0) {
    RowOpParams a = p;
    a.quant = QuantMode::kPerToken;
    a.rule = identity_rule();
    a.out = nullptr;
    a.scales = p.workspace;
    a.scale_row_stride = 1;
    run_rows(a);
  }
  tensor_scale(static_cast<const float*>(p.workspace), p.rows, p.scales, p.rule, p.out_dtype);
  if (p.rows > 0) {
    RowOpParams b = p;
    b.quant = QuantMode::kStatic;
    b.scale = p.scales;
    b.scales = nullptr;
    b.norm_out = nullptr;  // written by pass 1
    if (p.residual != nullptr) {
      b.input = p.residual_out;
      b.input_row_stride = p.hidden;
      b.residual = nullptr;
      b.residual_out = nullptr;
    }
    run_rows(b);
  }
}

}  // namespace fusion_kernels
