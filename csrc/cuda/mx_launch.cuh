// SPDX-License-Identifier: Apache-2.0
// Host side of the microscaling kernels (mx_kernels.cuh): the thread mapping of the row op
// (launch_shape: from H alone, so the norm stage is the row op's), the aligned / register-cached
// variant, the padding blocks of the swizzled scales, and the launch on the caller's stream
// (programmatic dependent launch as the row op's). Included by one .cu per format family.
#pragma once

#include "cuda/launch.cuh"
#include "cuda/mx_kernels.cuh"

namespace fusion_kernels {
namespace dev {

#ifndef FK_MX_SPLIT_MAX  // blocks a row of a few-row norm op is split over, at most (a power of two;
#define FK_MX_SPLIT_MAX 4  // 1: no split)
#endif

#ifndef FK_MX_PAD_BLOCKS  // at most this many blocks zero the swizzled scales' padding rows
#define FK_MX_PAD_BLOCKS 64
#endif

template <typename T, typename W, int FMT, bool NORM, bool RES, bool ALIGNED, bool CACHED>
void launch_mx_variant(const MxQuantParams& p, const LaunchShape& shape, cudaStream_t stream, int device) {
  constexpr auto kernel = &mx_kernel<T, W, FMT, NORM, RES, ALIGNED, CACHED>;
  int rpb = shape.rows_per_block;
  if (rpb > 1 && p.rows < static_cast<int64_t>(rpb) * sm_count(device)) rpb = 1;
  const dim3 block(shape.tpr, rpb);
  const int64_t row_groups = (p.rows + rpb - 1) / rpb;
  // A few rows of a norm op are split over up to FK_MX_SPLIT_MAX blocks while they fit in one
  // wave on the SMs (the kernel's `split`, as the row op's latency variant).
  int split = 1, split_log2 = 0;  // (the kernel takes log2: a shift and a mask instead of a division)
  if constexpr (CACHED && NORM) {
    while (split < FK_MX_SPLIT_MAX && split * 2 <= kCachedSlots && row_groups * split * 2 <= sm_count(device)) {
      split *= 2;
      ++split_log2;
    }
  }
  int64_t pad_blocks = 0;
  if (p.swizzled) {
    const int64_t cols = p.hidden / block_elems<FMT>();
    const int64_t words = ((p.rows + 127) / 128 * 128 - p.rows) * ((cols + 3) / 4);
    const int64_t threads = static_cast<int64_t>(shape.tpr) * rpb;
    pad_blocks = (words + threads - 1) / threads;
    if (pad_blocks > FK_MX_PAD_BLOCKS) pad_blocks = FK_MX_PAD_BLOCKS;
  }
  launch_kernel(kernel, row_groups * split + pad_blocks, block, 0, stream, pdl_enabled(device), p, row_groups, split_log2);
}

template <typename T, typename W, int FMT, bool NORM, bool RES>
void launch_mx_aligned(const MxQuantParams& p, cudaStream_t stream, int device) {
  const LaunchShape shape = launch_shape(p.hidden, static_cast<int>(sizeof(T)));
  constexpr int64_t V = 16 / sizeof(T);
  bool aligned = aligned16(p.input) && p.input_row_stride % V == 0;
  if (RES) aligned = aligned && aligned16(p.residual) && p.residual_row_stride % V == 0;
  if (NORM) aligned = aligned && aligned16(p.weight);
  if (!aligned) return launch_mx_variant<T, W, FMT, NORM, RES, false, false>(p, shape, stream, device);
  if (shape.cached) return launch_mx_variant<T, W, FMT, NORM, RES, true, true>(p, shape, stream, device);
  launch_mx_variant<T, W, FMT, NORM, RES, true, false>(p, shape, stream, device);
}

template <typename T, int FMT>
void launch_mx_for_stages(const MxQuantParams& p, cudaStream_t stream, int device) {
  if (p.weight == nullptr) return launch_mx_aligned<T, T, FMT, false, false>(p, stream, device);
  // A 16-bit model may keep its norm weight in fp32.
  if constexpr (!std::is_same_v<T, float>) {
    if (p.weight_dtype == DType::kFloat32) {
      return p.residual ? launch_mx_aligned<T, float, FMT, true, true>(p, stream, device)
                        : launch_mx_aligned<T, float, FMT, true, false>(p, stream, device);
    }
  }
  return p.residual ? launch_mx_aligned<T, T, FMT, true, true>(p, stream, device)
                    : launch_mx_aligned<T, T, FMT, true, false>(p, stream, device);
}

template <int FMT>
void launch_mx(const MxQuantParams& p, cudaStream_t stream, int device) {
  switch (p.in_dtype) {
    case DType::kFloat32: return launch_mx_for_stages<float, FMT>(p, stream, device);
    case DType::kFloat16: return launch_mx_for_stages<fp16_t, FMT>(p, stream, device);
    case DType::kBFloat16: return launch_mx_for_stages<bf16_t, FMT>(p, stream, device);
    default: throw std::runtime_error("fusion_kernels: unsupported input dtype");
  }
}

}  // namespace dev

// One per format family, each in its own translation unit.
void mx_quant_cuda_fp8(const MxQuantParams& p, cudaStream_t stream, int device);
void mx_quant_cuda_fp4(const MxQuantParams& p, cudaStream_t stream, int device);

}  // namespace fusion_kernels
