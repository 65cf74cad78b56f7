// SPDX-License-Identifier: Apache-2.0
// MXFP8 (e4m3 and e5m2 elements, E8M0 block scales), alone or after [residual add +] RMSNorm.
#include "cuda/mx_launch.cuh"

namespace fusion_kernels {

void mx_quant_cuda_fp8(const MxQuantParams& p, cudaStream_t stream, int device) {
  if (p.kind == MxKind::kMxfp8E5m2) return dev::launch_mx<dev::kFmtE5m2>(p, stream, device);
  dev::launch_mx<dev::kFmtE4m3>(p, stream, device);
}

}  // namespace fusion_kernels
