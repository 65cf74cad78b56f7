// SPDX-License-Identifier: Apache-2.0
// The kernels' reductions: sums and NaN-propagating maxima over the lanes of a warp and the
// threads of a row, the running absmax of a thread's slots, and the group quant's absmax over the
// lanes that share a group (a butterfly, or a reduce-scatter that leaves one group per lane).
#pragma once

#include "cuda/compat.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"

namespace fusion_kernels {
namespace dev {

__device__ __forceinline__ float nan_max(float a, float b) { return max_nan(a, b); }

template <bool MAX>
__device__ __forceinline__ float combine(float a, float b) {
  if constexpr (MAX) {
    return nan_max(a, b);
  } else {
    return a + b;
  }
}

// Butterfly over aligned groups of `width` lanes: every lane ends with the same value.
// MAX reductions are over absolute values (>= +0 or NaN).
template <bool MAX>
__device__ __forceinline__ float lanes_reduce(float v, int width) {
#if FK_HAS_REDUX
  // A whole warp: one instruction instead of five shuffle steps. (Groups of fewer lanes keep the
  // butterfly: with a mask per group the hardware runs the groups one after another.)
  if constexpr (MAX && FK_REDUX) {
    if (width >= kWarpSize) return lanes_max_nonneg(v, 0xffffffffu);
  }
#endif
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1)
    if (o < width) v = combine<MAX>(v, shfl_xor(v, o));
  return v;
}

// Reduction over the `tpr` threads of one row. All threads of the block must call it.
template <bool MAX>
__device__ __forceinline__ float row_reduce(float v, float* smem) {
  v = lanes_reduce<MAX>(v, kWarpSize);
  const int tpr = blockDim.x;
  if (tpr <= kWarpSize) return v;
  const int warps = tpr / kWarpSize;
  float* mine = smem + threadIdx.y * warps;
  if (threadIdx.x % kWarpSize == 0) mine[threadIdx.x / kWarpSize] = v;
  __syncthreads();
#if FK_HAS_REDUX
  if constexpr (MAX && FK_REDUX) {  // the warps' maxima, one per lane (warps <= 16), in one step
    const int l = static_cast<int>(threadIdx.x % kWarpSize);
    return lanes_max_nonneg(l < warps ? mine[l] : 0.0f, 0xffffffffu);
  }
#endif
  float r = mine[0];
  for (int k = 1; k < warps; ++k) r = combine<MAX>(r, mine[k]);
  return r;
}

// Running absmax of a slot: packed pairs for 16-bit types (exact: max commutes with rounding).
template <typename T>
struct AbsMax {
  using P = typename Pair<T>::type;
  P acc;
  __device__ AbsMax() { acc = from_float2<P>(make_float2(0.0f, 0.0f)); }
  template <int V>
  __device__ __forceinline__ void add(const Pack<T, V>& y) {
    const P* y2 = reinterpret_cast<const P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) acc = abs_max_nan(y2[p], acc);
  }
  __device__ __forceinline__ float value() const {
    const float2 f = to_float2(acc);
    return nan_max(f.x, f.y);
  }
};
template <>
struct AbsMax<float> {
  float acc = 0.0f;
  template <int V>
  __device__ __forceinline__ void add(const Pack<float, V>& y) {
#pragma unroll
    for (int k = 0; k < V; ++k) acc = nan_max(fabsf(y.v[k]), acc);
  }
  __device__ __forceinline__ float value() const { return acc; }
};

// Group absmax of every slot a thread holds: a butterfly over aligned groups of `width` lanes,
// the S chains interleaved. For 16-bit inputs the per-slot maxima are values of T, so two of
// them travel in one packed pair per shuffle (max commutes with the pairing: exact).
template <typename T, int S>
__device__ __forceinline__ void group_absmax(float (&v)[S], int width) {
  if constexpr (kIs16<T> && S % 2 == 0) {
    using P = typename Pair<T>::type;
    P m[S / 2];
#pragma unroll
    for (int k = 0; k < S / 2; ++k) m[k] = from_float2<P>(make_float2(v[2 * k], v[2 * k + 1]));
#pragma unroll
    for (int o = kWarpSize / 2; o > 0; o >>= 1) {
      if (o < width) {
#pragma unroll
        for (int k = 0; k < S / 2; ++k)
          m[k] = max_nan_pair(shfl_xor_pair(m[k], o), m[k]);  // both are absolute values already
      }
    }
#pragma unroll
    for (int k = 0; k < S / 2; ++k) {
      const float2 f = to_float2(m[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int o = kWarpSize / 2; o > 0; o >>= 1) {
      if (o < width) {
#pragma unroll
        for (int k = 0; k < S; ++k) v[k] = combine<true>(v[k], shfl_xor(v[k], o));
      }
    }
  }
}

// Reduce-scatter of the group absmax of a 16-bit T, for NG groups per thread (a power of two,
// >= 2) over aligned sets of `width` lanes (width >= NG). The per-thread maxima are values of T
// and travel two per shuffle: at each of the first levels a lane keeps half of its pairs (the
// upper half where its bit `o` is set) and sends the other half to lane ^ o, until it holds one
// pair; the remaining levels of the butterfly complete that pair, and the lane's bit NG / 2 picks
// its group, scatter_group<NG>(lane). For NG = 4: 3 shuffles instead of 2 * log2(width), and then
// one scale per lane instead of 4. Max is exact and order-free: the butterfly's result bit for bit.
template <int NG>
__device__ __forceinline__ int scatter_group(int lane) {
  int g = 0;
#pragma unroll
  for (int o = 1; o < NG; o <<= 1) g = (g << 1) | ((lane & o) ? 1 : 0);
  return g;
}
// The lane bits (below NG) of the lanes that hold group g after the scatter.
template <int NG>
__host__ __device__ constexpr int scatter_lane_bits(int g) {
  int bits = 0;
  for (int o = 1, b = NG / 2; o < NG; o <<= 1, b >>= 1) bits |= (g & b) ? o : 0;
  return bits;
}
template <typename T, int NG>
__device__ __forceinline__ float group_absmax_scatter(const AbsMax<T> (&am)[NG], int width, int lane) {
  static_assert(kIs16<T> && NG >= 2, "the scatter is for pairs of 16-bit values");
  using P = typename Pair<T>::type;
  P cur[NG / 2];
#pragma unroll
  for (int k = 0; k < NG / 2; ++k) {  // (absmax of group 2k, of group 2k + 1) from their running pairs
    const P a = am[2 * k].acc, b = am[2 * k + 1].acc;
    cur[k] = max_nan_pair(pair_perm<0x5410>(a, b), pair_perm<0x7632>(a, b));
  }
  int o = 1;
#pragma unroll
  for (int n = NG / 2; n > 1; n >>= 1, o <<= 1) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int k = 0; k < n / 2; ++k) {
      const P keep = upper ? cur[n / 2 + k] : cur[k];
      const P send = upper ? cur[k] : cur[n / 2 + k];
      cur[k] = max_nan_pair(keep, shfl_xor_pair(send, o));
    }
  }
#pragma unroll
  for (; o < kWarpSize; o <<= 1)
    if (o < width) cur[0] = max_nan_pair(cur[0], shfl_xor_pair(cur[0], o));
  const float2 f = to_float2(cur[0]);
  return (lane & (NG / 2)) ? f.y : f.x;
}

}  // namespace dev
}  // namespace fusion_kernels
