// SPDX-License-Identifier: Apache-2.0
// Per-token-group FP8 quantization, alone or after [residual add +] RMSNorm: the fixed-rule
// ops' e4m3fn kernels here, their e4m3fnuz ones in row_op_per_group_fnuz.cu, the rule ops' in
// row_op_per_group_rule*.cu (one translation unit per output dtype: parallel builds).
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_group(const RowOpParams& p, cudaStream_t stream, int device) {
  if (p.rule.fixed == ScaleRule::kRuleGiven) return row_op_cuda_per_group_rule(p, stream, device);
  switch (p.out_dtype) {
    case DType::kFp8E4m3fn:
      return dev::launch_out_kind<dev::OutKind::kE4m3fn, QuantMode::kPerGroup, false>(p, stream, device);
    case DType::kFp8E4m3fnuz: return row_op_cuda_per_group_fnuz(p, stream, device);
    default: dev::unsupported_out_dtype();  // INT8 per-token-group: the rule ops only
  }
}

}  // namespace fusion_kernels
