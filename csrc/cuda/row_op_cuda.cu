// SPDX-License-Identifier: Apache-2.0
// Entry points of the CUDA row op and the microscaling ops: find the caller's current stream and
// dispatch on the quant mode or format. Knows no torch headers: the stream comes from the stable C shim, looked up weakly
// so that this library still loads (CPU kernels only) into a CPU-only torch.
#include "cuda/row_op_cuda.h"

#include "cuda/mx_cuda.h"
#include "cuda/mx_launch.cuh"
#include "per_tensor.h"

// Declared in torch's C shim under USE_CUDA and defined in the CUDA part of libtorch; on
// torch >= 2.11 it returns the current cudaStream_t (hipStream_t on ROCm) of a device.
extern "C" __attribute__((weak)) int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace fusion_kernels {

namespace {

cudaStream_t current_stream(int32_t device_index) {
  if (aoti_torch_get_current_cuda_stream == nullptr)
    throw std::runtime_error("fusion_kernels: this torch has no CUDA stream API (CPU-only build?)");
  void* stream = nullptr;
  if (aoti_torch_get_current_cuda_stream(device_index, &stream) != 0)
    throw std::runtime_error("fusion_kernels: could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

void row_op_cuda(const RowOpParams& p, int32_t device_index) {
  if (p.rows == 0 && p.quant != QuantMode::kPerTensor) return;
  cudaStream_t s = current_stream(device_index);
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

void mx_quant_cuda(const MxQuantParams& p, int32_t device_index) {
  if (p.rows == 0) return;
  cudaStream_t s = current_stream(device_index);
  if (p.kind == MxKind::kMxfp8E4m3 || p.kind == MxKind::kMxfp8E5m2) return mx_quant_cuda_fp8(p, s, device_index);
  mx_quant_cuda_fp4(p, s, device_index);
}

}  // namespace fusion_kernels
