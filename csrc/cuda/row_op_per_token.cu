// SPDX-License-Identifier: Apache-2.0
// Dynamic per-token FP8/INT8 quantization, alone or after [residual add +] RMSNorm.
#include "cuda/launch.cuh"

namespace fusion_kernels {

void row_op_cuda_per_token(const RowOpParams& p, cudaStream_t stream, int device) {
  if (p.rule.fixed == ScaleRule::kRuleGiven) return row_op_cuda_per_token_rule(p, stream, device);
  dev::launch_quantized_as<QuantMode::kPerToken, false>(p, stream, device);
}

namespace dev {

// One block: the NaN-propagating max of the rows' absmaxes (exact, so the same whatever the
// order), then the rule. Launched plainly: it starts after the first pass has finished.
template <OutKind OUT>
__global__ void __launch_bounds__(kMaxThreads) tensor_scale_kernel(const float* row_absmax, int64_t rows, float* scale,
                                                                  const ScaleRule rule) {
  __shared__ float red[kMaxThreads / kWarpSize];
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) m = nan_max(row_absmax[i], m);
  m = row_reduce<true>(m, red);
  if (threadIdx.x == 0) *scale = scale_of<OUT, true>(m, rule);
}

}  // namespace dev

void tensor_scale_cuda(const float* row_absmax, int64_t rows, float* scale, const ScaleRule& rule, DType out,
                       cudaStream_t stream) {
  const dim3 grid(1), block(dev::kMaxThreads);
  switch (out) {
    case DType::kFp8E4m3fn:
      dev::tensor_scale_kernel<dev::OutKind::kE4m3fn><<<grid, block, 0, stream>>>(row_absmax, rows, scale, rule);
      break;
    case DType::kFp8E4m3fnuz:
      dev::tensor_scale_kernel<dev::OutKind::kE4m3fnuz><<<grid, block, 0, stream>>>(row_absmax, rows, scale, rule);
      break;
    case DType::kInt8:
      dev::tensor_scale_kernel<dev::OutKind::kInt8><<<grid, block, 0, stream>>>(row_absmax, rows, scale, rule);
      break;
    default: throw std::runtime_error("fusion_kernels: unsupported output dtype for the per-tensor quant");
  }
  dev::check_cuda(cudaGetLastError(), "kernel launch");
}

}  // namespace fusion_kernels
