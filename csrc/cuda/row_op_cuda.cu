// SPDX-License-Identifier: Apache-2.0
// Entry point of the CUDA row op: finds the caller's current stream and dispatches on the
// quant mode. Knows no torch headers: the stream comes from the stable C shim, looked up weakly
// so that this library still loads (CPU kernels only) into a CPU-only torch.
#include "cuda/row_op_cuda.h"

#include "cuda/launch.cuh"
#include "per_tensor.h"

// Declared in torch's C shim under USE_CUDA and defined in the CUDA part of libtorch; on
// torch >= 2.11 it returns the current cudaStream_t (hipStream_t on ROCm) of a device.
extern "C" __attribute__((weak)) int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace fusion_kernels {

void row_op_cuda(const RowOpParams& p, int32_t device_index) {
  if (p.rows == 0 && p.quant != QuantMode::kPerTensor) return;
  if (aoti_torch_get_current_cuda_stream == nullptr)
    throw std::runtime_error("fusion_kernels: this torch has no CUDA stream API (CPU-only build?)");
  void* stream = nullptr;
  if (aoti_torch_get_current_cuda_stream(device_index, &stream) != 0)
    throw std::runtime_error("fusion_kernels: could not get the current CUDA stream");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.quant) {
    case QuantMode::kNone: return row_op_cuda_plain(p, s, device_index);
    case QuantMode::kStatic: return row_op_cuda_static(p, s, device_index);
    case QuantMode::kPerToken: return row_op_cuda_per_token(p, s, device_index);
    case QuantMode::kPerGroup: return row_op_cuda_per_group(p, s, device_index);
    case QuantMode::kPerTensor:
      return run_per_tensor(
          p, [&](const RowOpParams& q) { row_op_cuda(q, device_index); },
          [&](const float* row_absmax, int64_t rows, float* scale, const ScaleRule& rule, DType out) {
            tensor_scale_cuda(row_absmax, rows, scale, rule, out, s);
          });
  }
}

}  // namespace fusion_kernels
