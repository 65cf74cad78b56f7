// SPDX-License-Identifier: Apache-2.0
// The rule ops' per-token-group e4m3fnuz kernels (row_op_per_group_rule.cu dispatches).
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_group_rule_fnuz(const RowOpParams& p, cudaStream_t stream, int device) {
#if FK_GPU_RULE_OPS
  dev::launch_out_kind<dev::OutKind::kE4m3fnuz, QuantMode::kPerGroup, true>(p, stream, device);
#else
  dev::launch_rule_op<QuantMode::kPerGroup>(p, stream, device);
#endif
}

}  // namespace fusion_kernels
