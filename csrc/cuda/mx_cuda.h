// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "mx_params.h"

namespace fusion_kernels {

// Launches a microscaling quant op on the current CUDA (or HIP) stream of `device_index`
// (arguments already validated; pointers are device pointers; the swizzled scales' padding is
// written by the kernel).
void mx_quant_cuda(const MxQuantParams& p, int32_t device_index);

}  // namespace fusion_kernels
