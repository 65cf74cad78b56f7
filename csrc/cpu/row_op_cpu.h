// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "row_op.h"

namespace fusion_kernels {

// Runs the row op on CPU tensors described by `p` (arguments already validated).
void row_op_cpu(const RowOpParams& p);

}  // namespace fusion_kernels
