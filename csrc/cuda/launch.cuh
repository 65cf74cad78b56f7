// SPDX-License-Identifier: Apache-2.0
// Host side of the CUDA row op: picks the launch configuration (from H only), the aligned or
// element-wise access path, the register-cached or re-reading variant, and launches on the
// caller's stream. Included by one .cu per quant mode so the instantiations compile in parallel.
#pragma once

#include <atomic>
#include <stdexcept>
#include <string>

#include "cuda/row_op_kernels.cuh"

namespace fusion_kernels {
namespace dev {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fusion_kernels: ") + what + ": " + cudaGetErrorString(err));
}

struct LaunchShape {
  int tpr;  // threads per row (power of two, >= warp size, <= kMaxThreads)
  int rows_per_block;
  bool cached;
};

// The configuration depends on the hidden size and the element width only: never on the
// number of rows (batch invariance) and never on the quant mode (fused == unfused bit for bit).
inline LaunchShape launch_shape(int64_t hidden, int elem_bytes) {
  const int64_t V = 16 / elem_bytes;
  const int64_t nslots = (hidden + V - 1) / V;
  int64_t tpr = kWarpSize;
  while (tpr < kMaxThreads && tpr * kCachedSlots < nslots) tpr *= 2;
  LaunchShape s;
  s.tpr = static_cast<int>(tpr);
  s.cached = nslots <= tpr * kCachedSlots;
  s.rows_per_block = tpr >= kRowsBlockThreads ? 1 : static_cast<int>(kRowsBlockThreads / tpr);
  return s;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline int sm_count(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device), "query SM count");
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, int device) {
  // Per kernel instantiation, per device, per block size (256 or 512 threads).
  static std::atomic<int> cache[64][2];
  if (device < 0 || device >= 64) device = 0;
  const int slot = threads > kRowsBlockThreads ? 1 : 0;
  int v = cache[device][slot].load(std::memory_order_relaxed);
  if (v == 0) {
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, threads, 0), "occupancy query");
    if (v < 1) v = 1;
    cache[device][slot].store(v, std::memory_order_relaxed);
  }
  return v;
}

template <typename T, typename W, OutKind OUT, QuantMode Q, bool NORM, bool RES, bool ALIGNED, bool CACHED>
void launch_variant(const RowOpParams& p, const LaunchShape& shape, cudaStream_t stream, int device) {
  auto kernel = row_op_kernel<T, W, OUT, Q, NORM, RES, ALIGNED, CACHED>;
  const dim3 block(shape.tpr, shape.rows_per_block);
  const int threads = shape.tpr * shape.rows_per_block;
  const int64_t row_groups = (p.rows + shape.rows_per_block - 1) / shape.rows_per_block;
#ifndef FK_PERSISTENT
#define FK_PERSISTENT 0
#endif
  // One block per row group by default (measured fastest, see BENCHMARKS.md); a persistent
  // grid (as many blocks as fit at once, each looping over row groups) is a tuning option.
  const int64_t resident = static_cast<int64_t>(sm_count(device)) * resident_blocks_per_sm(kernel, threads, device);
  const int64_t grid = (FK_PERSISTENT && row_groups > resident) ? resident : row_groups;
  kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "kernel launch");
}

template <typename T, typename W, OutKind OUT, QuantMode Q, bool NORM, bool RES>
void launch_row_op(const RowOpParams& p, cudaStream_t stream, int device) {
  const int elem = static_cast<int>(sizeof(T));
  const LaunchShape shape = launch_shape(p.hidden, elem);
  const int64_t V = 16 / elem;
  bool aligned = p.hidden % V == 0 && aligned16(p.input) && p.input_row_stride % V == 0;
  if (RES) aligned = aligned && aligned16(p.residual) && p.residual_row_stride % V == 0;
  if (NORM) aligned = aligned && aligned16(p.weight);
  if (aligned) {
    if (shape.cached)
      launch_variant<T, W, OUT, Q, NORM, RES, true, true>(p, shape, stream, device);
    else
      launch_variant<T, W, OUT, Q, NORM, RES, true, false>(p, shape, stream, device);
  } else {
    if (shape.cached)
      launch_variant<T, W, OUT, Q, NORM, RES, false, true>(p, shape, stream, device);
    else
      launch_variant<T, W, OUT, Q, NORM, RES, false, false>(p, shape, stream, device);
  }
}

// The residual add exists only together with the norm.
template <typename T, typename W, OutKind OUT, QuantMode Q, bool NORM>
void launch_for_residual(const RowOpParams& p, cudaStream_t stream, int device) {
  if constexpr (NORM) {
    if (p.residual != nullptr) return launch_row_op<T, W, OUT, Q, true, true>(p, stream, device);
  }
  launch_row_op<T, W, OUT, Q, NORM, false>(p, stream, device);
}

// A 16-bit model may keep its norm weight in fp32; the weight type is then a kernel parameter.
template <typename T, OutKind OUT, QuantMode Q, bool NORM>
void launch_for_weight_dtype(const RowOpParams& p, cudaStream_t stream, int device) {
  if constexpr (NORM && !std::is_same_v<T, float>) {
    if (p.weight_dtype == DType::kFloat32) return launch_for_residual<T, float, OUT, Q, NORM>(p, stream, device);
  }
  launch_for_residual<T, T, OUT, Q, NORM>(p, stream, device);
}

template <OutKind OUT, QuantMode Q, bool NORM>
void launch_for_input_dtype(const RowOpParams& p, cudaStream_t stream, int device) {
  switch (p.in_dtype) {
    case DType::kFloat32: return launch_for_weight_dtype<float, OUT, Q, NORM>(p, stream, device);
    case DType::kFloat16: return launch_for_weight_dtype<fp16_t, OUT, Q, NORM>(p, stream, device);
    case DType::kBFloat16: return launch_for_weight_dtype<bf16_t, OUT, Q, NORM>(p, stream, device);
    default: throw std::runtime_error("fusion_kernels: unsupported input dtype");
  }
}

template <QuantMode Q>
void launch_quantized(const RowOpParams& p, cudaStream_t stream, int device) {
  const bool norm = p.weight != nullptr;
  switch (p.out_dtype) {
    case DType::kFp8E4m3fn:
      return norm ? launch_for_input_dtype<OutKind::kE4m3fn, Q, true>(p, stream, device)
                  : launch_for_input_dtype<OutKind::kE4m3fn, Q, false>(p, stream, device);
    case DType::kFp8E4m3fnuz:
      return norm ? launch_for_input_dtype<OutKind::kE4m3fnuz, Q, true>(p, stream, device)
                  : launch_for_input_dtype<OutKind::kE4m3fnuz, Q, false>(p, stream, device);
    case DType::kInt8:
      if constexpr (Q != QuantMode::kPerGroup) {
        return norm ? launch_for_input_dtype<OutKind::kInt8, Q, true>(p, stream, device)
                    : launch_for_input_dtype<OutKind::kInt8, Q, false>(p, stream, device);
      }
      [[fallthrough]];
    default: throw std::runtime_error("fusion_kernels: unsupported output dtype for this quant mode");
  }
}

}  // namespace dev

// One per quant mode, each in its own translation unit.
void row_op_cuda_plain(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_static(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_token(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_group(const RowOpParams& p, cudaStream_t stream, int device);

}  // namespace fusion_kernels
