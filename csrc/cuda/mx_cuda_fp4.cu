// SPDX-License-Identifier: Apache-2.0
// MXFP4 (E8M0 block scales) and NVFP4 (E4M3 block scales, fp32 global scale), packed two
// elements a byte, alone or after [residual add +] RMSNorm.
#include "cuda/mx_launch.cuh"

namespace fusion_kernels {

void mx_quant_cuda_fp4(const MxQuantParams& p, cudaStream_t stream, int device) {
  if (p.kind == MxKind::kNvfp4) return dev::launch_mx<dev::kFmtNvfp4>(p, stream, device);
  dev::launch_mx<dev::kFmtMxfp4>(p, stream, device);
}

}  // namespace fusion_kernels
