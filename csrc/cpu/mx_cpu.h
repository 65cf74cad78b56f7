// SPDX-License-Identifier: Apache-2.0
// CPU kernels of the microscaling quant ops (MXFP8, MXFP4, NVFP4), unfused and fused with the
// RMSNorm of the row op. Knows nothing about tensors: raw pointers and sizes (mx_ops.cpp fills
// MxQuantParams after checking the arguments).
#pragma once

#include <cstdint>

#include "mx_params.h"

namespace fusion_kernels {

// Runs the op on CPU buffers described by `p` (arguments already validated).
void mx_quant_cpu(const MxQuantParams& p);

}  // namespace fusion_kernels
