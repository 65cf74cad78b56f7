// SPDX-License-Identifier: Apache-2.0
// The norm stage's per-slot arithmetic, with the spec's rounding points (row_op_kernels.cuh):
// the residual add, the sum of squares and the normalization.
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"
#include "cuda/memory.cuh"

namespace fusion_kernels {
namespace dev {

// A slot is Pack<T, V>. 16-bit types are processed as V/2 packed pairs; fp32 element-wise
// (rounding to fp32 is the identity). W is the weight's element type (T or float).
//
// SHIFT (for bf16; the same floats): a pair widened by a shift and a mask, one instruction fewer
// than the conversion intrinsic, at the price of the pair's register living a little longer
// (the microscaling kernels that keep the row in registers take it; in the re-reading ones it
// cost registers and a resident block).
template <bool SHIFT, typename P>
__device__ __forceinline__ float2 widen(P v) {
  if constexpr (SHIFT && std::is_same_v<P, bf162_t>) {
    uint32_t u;
    __builtin_memcpy(&u, &v, sizeof(u));
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xFFFF0000u));
  } else {
    return to_float2(v);
  }
}

template <typename T, int V>
__device__ __forceinline__ void add_residual(Pack<T, V>& x, const Pack<T, V>& r) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    P* x2 = reinterpret_cast<P*>(x.v);
    const P* r2 = reinterpret_cast<const P*>(r.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 a = to_float2(x2[p]), b = to_float2(r2[p]);
      x2[p] = from_float2<P>(make_float2(a.x + b.x, a.y + b.y));
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) x.v[k] = x.v[k] + r.v[k];
  }
}

template <bool SHIFT = false, typename T, int V>
__device__ __forceinline__ void accumulate_squares(const Pack<T, V>& r, float& acc0, float& acc1) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* r2 = reinterpret_cast<const P*>(r.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 f = widen<SHIFT>(r2[p]);
      acc0 = fmaf(f.x, f.x, acc0);
      acc1 = fmaf(f.y, f.y, acc1);
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; k += 2) {
      acc0 = fmaf(r.v[k], r.v[k], acc0);
      acc1 = fmaf(r.v[k + 1], r.v[k + 1], acc1);
    }
  }
}

// y = T(T(r * inv) * w), in place.
template <bool SHIFT = false, typename T, typename W, int V>
__device__ __forceinline__ void normalize(Pack<T, V>& y, float inv, const Pack<W, V>& w) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    P* y2 = reinterpret_cast<P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 f = widen<SHIFT>(y2[p]);
      const P normed = from_float2<P>(make_float2(f.x * inv, f.y * inv));
      if constexpr (std::is_same_v<W, T>) {
        y2[p] = mul_round(normed, reinterpret_cast<const P*>(w.v)[p]);
      } else {
        const float2 g = to_float2(normed);
        y2[p] = from_float2<P>(make_float2(g.x * w.v[2 * p], g.y * w.v[2 * p + 1]));
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = (y.v[k] * inv) * w.v[k];
  }
}

}  // namespace dev
}  // namespace fusion_kernels
