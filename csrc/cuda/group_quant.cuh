// SPDX-License-Identifier: Apache-2.0
// The group quant's scales (one per group_size elements of a row): the run length its kernels
// are compiled for, and the scales of a chunk of a thread's slots, by a butterfly over the lanes
// that share a group or by a reduce-scatter that leaves one group's scale per lane.
#pragma once

#include "cuda/compat.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"
#include "cuda/quantizers.cuh"
#include "cuda/reductions.cuh"

namespace fusion_kernels {
namespace dev {

// The group quant's run length for a group of `group_slots` slots: a thread's slots of a chunk
// fall into runs of this many consecutive slots in one group each. A kernel template parameter
// (GRUN): the group code unrolled for a run length chosen at run time costs registers (spills).
constexpr int kMinGroupSize = 32;  // group sizes: 32, 64 or 128 (checked by the op)
__host__ __device__ constexpr int group_run_of(int group_slots) {
  return group_slots / kRunLanes >= kRun ? kRun : (group_slots / kRunLanes >= 1 ? group_slots / kRunLanes : 1);
}

// The group quant's scales of one chunk of a thread's slots y[0..R-1] (has[i]: slot i holds a y
// of the row; the others count as 0), whose aligned runs of M slots belong to one group each, the
// group's other runs on the aligned `width` lanes around this one: an in-thread absmax over the
// run, then one butterfly for all runs, and one scale per run (the kernel's rule, kernel_rule).
template <int M, OutKind OUT, bool RULE, typename T, int V, int R>
__device__ __forceinline__ void group_scales(const Pack<T, V> (&y)[R], const bool (&has)[R], int width,
                                             const ScaleRule& rule, float (&scale)[R / M]) {
  float amax[R / M];
#pragma unroll
  for (int g = 0; g < R / M; ++g) {
    AbsMax<T> am;
#pragma unroll
    for (int t = 0; t < M; ++t)
      if (has[g * M + t]) am.add(y[g * M + t]);
    amax[g] = am.value();
  }
  group_absmax<T, R / M>(amax, width);
#pragma unroll
  for (int g = 0; g < R / M; ++g) scale[g] = scale_of<OUT, RULE>(amax[g], rule);
}

// The reduce-scatter counterpart of group_scales, for 16-bit T and NG = R / M >= 2 groups per
// chunk: the scale of this lane's group (scatter_group<NG>(lane)) only.
template <int M, OutKind OUT, bool RULE, typename T, int V, int R>
__device__ __forceinline__ float group_scale_scattered(const Pack<T, V> (&y)[R], const bool (&has)[R], int width,
                                                       int lane, const ScaleRule& rule) {
  constexpr int NG = R / M;
  AbsMax<T> am[NG];
#pragma unroll
  for (int g = 0; g < NG; ++g) {
#pragma unroll
    for (int t = 0; t < M; ++t)
      if (has[g * M + t]) am[g].add(y[g * M + t]);
  }
  return scale_of<OUT, RULE>(group_absmax_scatter<T, NG>(am, width, lane), rule);
}

}  // namespace dev
}  // namespace fusion_kernels
