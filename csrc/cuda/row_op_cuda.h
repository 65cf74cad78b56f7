// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "row_op.h"

namespace fusion_kernels {

// Launches the row op on the current CUDA (or HIP) stream of `device_index`
// (arguments already validated; pointers are device pointers).
void row_op_cuda(const RowOpParams& p, int32_t device_index);

}  // namespace fusion_kernels
