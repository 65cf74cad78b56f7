// SPDX-License-Identifier: Apache-2.0
// Device code of the row op ([residual add] -> [RMSNorm] -> [quantize]). Raw pointers only.
//
// Thread mapping (fixed by the hidden size H alone, never by the number of rows, so a row's
// result is bit-identical whatever the batch it is computed in, and the unfused ops, which run
// this same kernel with stages off, agree bit for bit with the fused ones):
//   - a row is cut into 16-byte "slots" of V = 16 / sizeof(T) elements;
//   - `tpr` threads (blockDim.x, a power of two >= the warp size) own a row; thread t owns
//     slots t, t + tpr, t + 2 tpr, ...; blockDim.y rows share a block when H is small;
//   - the block loops over row groups (grid-stride), keeping the norm weight in registers.
// The row is read from memory once and kept in registers (CACHED) when it fits in
// kCachedSlots slots per thread; otherwise each pass re-reads it (L2-resident) in the same order.
// Rounding points (the spec, fusion_kernels/reference.py):
//   r = T(x + residual); y = T(T(r * rsqrt(mean(r^2) + eps)) * w); q = quant(y / scale).
#pragma once

#include "cuda/compat.cuh"
#include "row_op.h"

namespace fusion_kernels {
namespace dev {

constexpr int kMaxThreads = 512;  // per block; also the largest threads-per-row
constexpr int kCachedSlots = 4;  // 16-byte slots per thread kept in registers
constexpr int kRowsBlockThreads = 256;  // block size when several rows share a block

enum class OutKind { kPlain, kE4m3fn, kE4m3fnuz, kInt8 };

template <typename U, int N>
struct alignas(N * sizeof(U) >= 16 ? 16 : N * sizeof(U)) Pack {
  U v[N];
};

template <int BYTES>
struct ChunkOf;
template <>
struct ChunkOf<16> { using type = uint4; };
template <>
struct ChunkOf<8> { using type = uint2; };
template <>
struct ChunkOf<4> { using type = uint32_t; };
template <>
struct ChunkOf<2> { using type = uint16_t; };
template <>
struct ChunkOf<1> { using type = uint8_t; };

// Copies N elements at element offset `start`: 16-byte (or narrower) vector accesses when the
// caller proved alignment, else element by element within `limit`.
template <bool ALIGNED, typename U, int N>
__device__ __forceinline__ void load_pack(const U* base, int64_t start, int64_t limit, Pack<U, N>& dst) {
  if constexpr (ALIGNED) {
    constexpr int BYTES = N * sizeof(U);
    constexpr int CB = BYTES >= 16 ? 16 : BYTES;
    using C = typename ChunkOf<CB>::type;
    const C* src = reinterpret_cast<const C*>(base + start);
    C* d = reinterpret_cast<C*>(dst.v);
#pragma unroll
    for (int c = 0; c < BYTES / CB; ++c) d[c] = src[c];
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) dst.v[k] = (start + k < limit) ? base[start + k] : U{};
  }
}

template <bool ALIGNED, typename U, int N>
__device__ __forceinline__ void store_pack(U* base, int64_t start, int64_t limit, const Pack<U, N>& src) {
  if constexpr (ALIGNED) {
    constexpr int BYTES = N * sizeof(U);
    constexpr int CB = BYTES >= 16 ? 16 : BYTES;
    using C = typename ChunkOf<CB>::type;
    C* dst = reinterpret_cast<C*>(base + start);
    const C* s = reinterpret_cast<const C*>(src.v);
#pragma unroll
    for (int c = 0; c < BYTES / CB; ++c) dst[c] = s[c];
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (start + k < limit) base[start + k] = src.v[k];
  }
}

// NaN-propagating max and clamp (fmaxf/fminf would drop a NaN operand).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float clamp_keep_nan(float v, float lo, float hi) {
  return v > hi ? hi : (v < lo ? lo : v);
}

template <bool MAX>
__device__ __forceinline__ float combine(float a, float b) {
  if constexpr (MAX) {
    return nan_max(a, b);
  } else {
    return a + b;
  }
}

// Butterfly over aligned groups of `width` lanes: every lane ends with the same value.
template <bool MAX>
__device__ __forceinline__ float lanes_reduce(float v, int width) {
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
  float r = mine[0];
  for (int k = 1; k < warps; ++k) r = combine<MAX>(r, mine[k]);
  return r;
}

__device__ __forceinline__ float ue8m0_ceil(float s) {
  // Round a positive finite scale up to a power of two, exactly.
  if (!(s > 0.0f) || s == INFINITY) return s;
  unsigned bits = __float_as_uint(s);
  if (bits & 0x007FFFFFu) bits = (bits & 0xFF800000u) + 0x00800000u;
  return __uint_as_float(bits);
}

template <OutKind OUT>
struct QuantTraits;
template <>
struct QuantTraits<OutKind::kE4m3fn> {
  static constexpr float kMax = kFp8E4m3fnMax;
  __device__ static uint8_t convert(float v) { return to_e4m3fn(clamp_keep_nan(v, -kMax, kMax)); }
};
template <>
struct QuantTraits<OutKind::kE4m3fnuz> {
  static constexpr float kMax = kFp8E4m3fnuzMax;
  __device__ static uint8_t convert(float v) { return to_e4m3fnuz(clamp_keep_nan(v, -kMax, kMax)); }
};
template <>
struct QuantTraits<OutKind::kInt8> {
  static constexpr float kMax = kInt8Max;
  __device__ static uint8_t convert(float v) {
    return static_cast<uint8_t>(to_int8(clamp_keep_nan(v, kInt8Min, kInt8Max)));
  }
};
template <>
struct QuantTraits<OutKind::kPlain> {
  static constexpr float kMax = 0.0f;
  __device__ static uint8_t convert(float) { return 0; }
};

template <typename T, OutKind OUT, QuantMode Q, bool NORM, bool ALIGNED, bool CACHED>
__global__ void __launch_bounds__(kMaxThreads) row_op_kernel(const RowOpParams p) {
  constexpr int V = 16 / sizeof(T);
  constexpr int S = CACHED ? kCachedSlots : 1;  // slots held in registers
  using TPack = Pack<T, V>;
  using QPack = Pack<uint8_t, V>;
  static_assert(OUT == OutKind::kPlain || Q != QuantMode::kNone, "quantized output needs a quant mode");

  __shared__ float red_sum[kMaxThreads / kWarpSize];
  __shared__ float red_max[kMaxThreads / kWarpSize];

  const int tpr = blockDim.x;
  const int lane = threadIdx.x;
  const int64_t H = p.hidden;
  const int64_t nslots = (H + V - 1) / V;
  const int loops = CACHED ? S : static_cast<int>((nslots + tpr - 1) / tpr);
  const bool has_res = p.residual != nullptr;
  const T* __restrict__ in_base = static_cast<const T*>(p.input);
  const T* __restrict__ res_base = static_cast<const T*>(p.residual);
  constexpr float qmax = QuantTraits<OUT>::kMax;

  float static_scale = 1.0f;
  if constexpr (Q == QuantMode::kStatic) static_scale = *p.scale;
  float ub = 0.0f;
  if constexpr (Q == QuantMode::kPerToken) {
    if (p.scale_ub != nullptr) ub = *p.scale_ub;
  }

  // The norm weight as fp32, loaded once per block and reused for every row it handles.
  float wc[CACHED && NORM ? S : 1][V];
  auto load_weight = [&](int64_t slot, float (&w)[V]) {
    if (p.weight_dtype == DType::kFloat32) {
      Pack<float, V> wp;
      load_pack<ALIGNED>(static_cast<const float*>(p.weight), slot * V, H, wp);
#pragma unroll
      for (int k = 0; k < V; ++k) w[k] = wp.v[k];
    } else {
      TPack wp;
      load_pack<ALIGNED>(static_cast<const T*>(p.weight), slot * V, H, wp);
#pragma unroll
      for (int k = 0; k < V; ++k) w[k] = to_float(wp.v[k]);
    }
  };
  if constexpr (CACHED && NORM) {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int64_t slot = lane + static_cast<int64_t>(i) * tpr;
      if (slot < nslots) load_weight(slot, wc[i]);
    }
  }

  for (int64_t rg = blockIdx.x; rg * blockDim.y < p.rows; rg += gridDim.x) {
    const int64_t row = rg * blockDim.y + threadIdx.y;
    const bool valid = row < p.rows;
    const T* x = in_base + row * p.input_row_stride;
    const T* res = res_base + row * p.residual_row_stride;
    T* res_out = static_cast<T*>(p.residual_out) + row * H;

    // r = T(x + residual), optionally written out as the new residual.
    auto load_row_slot = [&](int64_t slot, TPack& r, bool write_res) {
      load_pack<ALIGNED>(x, slot * V, H, r);
      if (has_res) {
        TPack rs;
        load_pack<ALIGNED>(res, slot * V, H, rs);
#pragma unroll
        for (int k = 0; k < V; ++k) r.v[k] = from_float<T>(to_float(r.v[k]) + to_float(rs.v[k]));
        if (write_res) store_pack<ALIGNED>(res_out, slot * V, H, r);
      }
    };

    TPack rows_cache[S];
    float inv = 1.0f;
    if constexpr (NORM) {
      float acc = 0.0f;
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i) {
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int64_t slot = lane + static_cast<int64_t>(j) * tpr;
          if (valid && slot < nslots) {
            TPack& r = rows_cache[CACHED ? i : 0];
            load_row_slot(slot, r, true);
#pragma unroll
            for (int k = 0; k < V; ++k) {
              const float f = to_float(r.v[k]);
              acc += f * f;
            }
          }
        }
      }
      const float sumsq = row_reduce<false>(acc, red_sum);
      inv = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, static_cast<float>(H)), p.epsilon)));
    } else if constexpr (CACHED) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int64_t slot = lane + static_cast<int64_t>(i) * tpr;
        if (valid && slot < nslots) load_row_slot(slot, rows_cache[i], true);
      }
    }

    // y for slot j (index i in the register cache): the normalized, weighted row in T.
    auto y_slot = [&](int i, int64_t slot, TPack& y) {
      if constexpr (CACHED) {
        y = rows_cache[i];
      } else {
        load_row_slot(slot, y, !NORM);
      }
      if constexpr (NORM) {
        float w[V];
        if constexpr (CACHED) {
#pragma unroll
          for (int k = 0; k < V; ++k) w[k] = wc[CACHED && NORM ? i : 0][k];
        } else {
          load_weight(slot, w);
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const T normed = from_float<T>(__fmul_rn(to_float(y.v[k]), inv));
          y.v[k] = from_float<T>(__fmul_rn(to_float(normed), w[k]));
        }
      }
    };
    if constexpr (CACHED && NORM) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int64_t slot = lane + static_cast<int64_t>(i) * tpr;
        if (valid && slot < nslots) y_slot(i, slot, rows_cache[i]);
      }
    }
    // From here on, in the cached path rows_cache holds y.
    auto get_y = [&](int i, int64_t slot, TPack& y) {
      if constexpr (CACHED) {
        y = rows_cache[i];
      } else {
        y_slot(0, slot, y);
      }
    };

    if constexpr (Q == QuantMode::kNone) {
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int64_t slot = lane + static_cast<int64_t>(j) * tpr;
          if (valid && slot < nslots) {
            TPack y;
            get_y(i, slot, y);
            store_pack<ALIGNED>(static_cast<T*>(p.out) + row * H, slot * V, H, y);
          }
        }
    } else if constexpr (Q == QuantMode::kStatic || Q == QuantMode::kPerToken) {
      float scale = static_scale;
      if constexpr (Q == QuantMode::kPerToken) {
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < (CACHED ? S : 1); ++i)
          for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
            const int64_t slot = lane + static_cast<int64_t>(j) * tpr;
            if (valid && slot < nslots) {
              TPack y;
              get_y(i, slot, y);
#pragma unroll
              for (int k = 0; k < V; ++k) amax = nan_max(fabsf(to_float(y.v[k])), amax);
            }
          }
        amax = row_reduce<true>(amax, red_max);
        const float a = (p.scale_ub != nullptr && amax > ub) ? ub : amax;
        const float min_scale = __frcp_rn(qmax * kPerTokenMinScaleFactor);
        scale = __fdiv_rn(a, qmax);
        scale = scale < min_scale ? min_scale : scale;
        if (valid && lane == 0) p.scales[row * p.scale_row_stride] = scale;
      }
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int64_t slot = lane + static_cast<int64_t>(j) * tpr;
          if (valid && slot < nslots) {
            TPack y;
            get_y(i, slot, y);
            QPack q;
#pragma unroll
            for (int k = 0; k < V; ++k) q.v[k] = QuantTraits<OUT>::convert(__fdiv_rn(to_float(y.v[k]), scale));
            store_pack<ALIGNED>(static_cast<uint8_t*>(p.out) + row * H, slot * V, H, q);
          }
        }
    } else {  // kPerGroup: a group is G / V consecutive slots, owned by aligned consecutive lanes
      const int lanes_per_group = static_cast<int>(p.group_size / V);
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int64_t slot = lane + static_cast<int64_t>(j) * tpr;
          const bool active = valid && slot < nslots;
          TPack y;
          float amax = 0.0f;
          if (active) {
            get_y(i, slot, y);
#pragma unroll
            for (int k = 0; k < V; ++k) amax = nan_max(fabsf(to_float(y.v[k])), amax);
          }
          amax = lanes_reduce<true>(amax, lanes_per_group);  // every lane of the warp takes part
          if (active) {
            const float a = amax < kGroupAbsmaxFloor ? kGroupAbsmaxFloor : amax;
            float scale = __fdiv_rn(a, qmax);
            if (p.scale_ue8m0) scale = ue8m0_ceil(scale);
            const int64_t group = slot / lanes_per_group;
            if (slot % lanes_per_group == 0)
              p.scales[row * p.scale_row_stride + group * p.scale_group_stride] = scale;
            QPack q;
#pragma unroll
            for (int k = 0; k < V; ++k) q.v[k] = QuantTraits<OUT>::convert(__fdiv_rn(to_float(y.v[k]), scale));
            store_pack<ALIGNED>(static_cast<uint8_t*>(p.out) + row * H, slot * V, H, q);
          }
        }
    }
    // The reduction buffers are reused by the next row group.
    if (tpr > kWarpSize) __syncthreads();
  }
}

}  // namespace dev
}  // namespace fusion_kernels
