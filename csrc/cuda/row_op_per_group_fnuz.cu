// SPDX-License-Identifier: Apache-2.0
// The fixed-rule per-token-group ops' e4m3fnuz kernels (row_op_per_group.cu dispatches).
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_group_fnuz(const RowOpParams& p, cudaStream_t stream, int device) {
  dev::launch_out_kind<dev::OutKind::kE4m3fnuz, QuantMode::kPerGroup, false>(p, stream, device);
}

}  // namespace fusion_kernels
