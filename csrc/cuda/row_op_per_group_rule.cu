// SPDX-License-Identifier: Apache-2.0
// The rule ops' per-token-group kernels (the scale rule given at run time: ScaleRule), alone or
// after [residual add +] RMSNorm: e4m3fn here, e4m3fnuz and int8 in row_op_per_group_rule_fnuz.cu
// and row_op_per_group_rule_int8.cu; the fixed-rule ops' in row_op_per_group*.cu.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_group_rule(const RowOpParams& p, cudaStream_t stream, int device) {
#if FK_GPU_RULE_OPS
  switch (p.out_dtype) {
    case DType::kFp8E4m3fn:
      return dev::launch_out_kind<dev::OutKind::kE4m3fn, QuantMode::kPerGroup, true>(p, stream, device);
    case DType::kFp8E4m3fnuz: return row_op_cuda_per_group_rule_fnuz(p, stream, device);
    case DType::kInt8: return row_op_cuda_per_group_rule_int8(p, stream, device);
    default: dev::unsupported_out_dtype();
  }
#else
  dev::launch_rule_op<QuantMode::kPerGroup>(p, stream, device);  // (throws: no rule-op kernels)
#endif
}

}  // namespace fusion_kernels
