// SPDX-License-Identifier: Apache-2.0
// Static per-tensor FP8/INT8 quantization, alone or after [residual add +] RMSNorm.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_static(const RowOpParams& p, cudaStream_t stream, int device) {
  dev::launch_quantized_as<QuantMode::kStatic, false>(p, stream, device);
}

}  // namespace fusion_kernels
