// SPDX-License-Identifier: Apache-2.0
// rms_norm and fused_add_rms_norm: the row op with no quantization.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_plain(const RowOpParams& p, cudaStream_t stream, int device) {
  dev::launch_for_input_dtype<dev::OutKind::kPlain, QuantMode::kNone, false, true>(p, stream, device);
}

}  // namespace fusion_kernels
