// SPDX-License-Identifier: Apache-2.0
// The kernels' unit of memory access: a 16-byte slot of a row (Pack), loaded and stored with
// vector accesses where the launcher proved alignment, element by element otherwise.
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"

namespace fusion_kernels {
namespace dev {

template <typename U, int N>
struct alignas(N * sizeof(U) >= 16 ? 16 : N * sizeof(U)) Pack {
  U v[N];
};

// Whether T is a 16-bit float (fp16, bf16): those are processed as packed pairs.
template <typename T>
constexpr bool kIs16 = !std::is_same_v<T, float>;

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
// caller proved alignment, else element by element within `limit`. STREAM: data touched once
// (cache-streaming hint).
template <bool ALIGNED, bool STREAM = false, typename U, int N>
__device__ __forceinline__ void load_pack(const U* base, int start, int limit, Pack<U, N>& dst) {
  if constexpr (ALIGNED) {
    constexpr int BYTES = N * sizeof(U);
    constexpr int CB = BYTES >= 16 ? 16 : BYTES;
    using C = typename ChunkOf<CB>::type;
    const C* src = reinterpret_cast<const C*>(base + start);
    C* d = reinterpret_cast<C*>(dst.v);
#pragma unroll
    for (int c = 0; c < BYTES / CB; ++c) d[c] = STREAM ? load_streaming(src + c) : src[c];
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) dst.v[k] = (start + k < limit) ? base[start + k] : U{};
  }
}

template <bool ALIGNED, bool STREAM = false, typename U, int N>
__device__ __forceinline__ void store_pack(U* base, int start, int limit, const Pack<U, N>& src) {
  if constexpr (ALIGNED) {
    constexpr int BYTES = N * sizeof(U);
    constexpr int CB = BYTES >= 16 ? 16 : BYTES;
    using C = typename ChunkOf<CB>::type;
    C* dst = reinterpret_cast<C*>(base + start);
    const C* s = reinterpret_cast<const C*>(src.v);
#pragma unroll
    for (int c = 0; c < BYTES / CB; ++c) {
      if constexpr (STREAM) {
        store_streaming(dst + c, s[c]);
      } else {
        dst[c] = s[c];
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (start + k < limit) base[start + k] = src.v[k];
  }
}

// Copies the slot at `src` (16-byte aligned) into shared memory with async_copy16; visible to
// the issuing thread after async_copy_wait_all.
template <typename U, int N>
__device__ __forceinline__ void async_copy_pack(Pack<U, N>* dst, const U* src) {
  constexpr int kChunks = sizeof(Pack<U, N>) / 16;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) async_copy16(reinterpret_cast<uint4*>(dst) + c, src + c * (N / kChunks));
}

}  // namespace dev
}  // namespace fusion_kernels
