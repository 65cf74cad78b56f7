// SPDX-License-Identifier: Apache-2.0
// The rule ops' per-token kernels (the scale rule given at run time: ScaleRule), alone or
// after [residual add +] RMSNorm; the fixed-rule ops' are in row_op_per_token.cu.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_token_rule(const RowOpParams& p, cudaStream_t stream, int device) {
  dev::launch_rule_op<QuantMode::kPerToken>(p, stream, device);
}

}  // namespace fusion_kernels
