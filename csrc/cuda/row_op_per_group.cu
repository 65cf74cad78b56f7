// SPDX-License-Identifier: Apache-2.0
// Per-token-group FP8 quantization, alone or after [residual add +] RMSNorm.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_group(const RowOpParams& p, cudaStream_t stream, int device) {
  if (p.rule.fixed == ScaleRule::kRuleGiven) return row_op_cuda_per_group_rule(p, stream, device);
  dev::launch_quantized_as<QuantMode::kPerGroup, false>(p, stream, device);
}

}  // namespace fusion_kernels
