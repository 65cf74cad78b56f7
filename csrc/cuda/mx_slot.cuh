// SPDX-License-Identifier: Apache-2.0
// The microscaling kernels' slot-level code (mx_kernels.cuh): one 16-byte slot of a block whose
// absmax is known, quantized with the block's scale (quantize_slot: the spec's arithmetic for every
// block, NaN and out-of-range factors included), and the two halves of its fast path for the
// scattered form, where one lane derives a block's scale (block_factor) and each lane converts its
// slots with the factor it is handed (convert_fast).
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"
#include "cuda/memory.cuh"
#include "cuda/mx_convert.cuh"
#include "microscaling.h"
#include "mx_params.h"

namespace fusion_kernels {
namespace dev {

// A slot's packed FP4 codes (V / 2 bytes: element 2i in the low nibble of byte i) stored at q_at.
template <int V>
__device__ __forceinline__ void store_fp4_word(void* q_at, uint32_t word) {
  if constexpr (V == 8) {
    *static_cast<uint32_t*>(q_at) = word;
  } else {
    *static_cast<uint16_t*>(q_at) = static_cast<uint16_t>(word);
  }
}

// Whether a format and row type take the packed FP4 conversion (quantize_slot's fast path): the
// caller then leaves f to quantize_slot, which fills it only for the blocks that need it.
template <int FMT, typename T>
constexpr bool kPackedFp4 = FK_PACKED_E2M1 && (FMT == kFmtMxfp4 || FMT == kFmtNvfp4) && std::is_same_v<T, bf16_t>;

// Quantizes one slot (V values of a block whose absmax is `amax`, already reduced over the
// block's lanes; `y`: the slot's values, whose encodings give a NaN's sign) and stores it; the
// block's first lane (`first`) stores the scale byte at `scale_at`.
//
// A block whose products with its factor are all finite-or-saturating numbers (the common case:
// no NaN or Inf in the block, and for NVFP4 a factor in (0, Inf), which a zero, infinite or NaN
// global scale breaks) takes one multiply an element and the finite conversions; every other
// block the spec's element-by-element arithmetic, NaN handling included. Both give the same
// bytes where the first applies: the clamp to +-6 is the e2m1 conversion's saturation, and
// x * (1 / d) is x / d for the power-of-two divisors (BlockDivisor). FP4 of bf16 rows off
// Blackwell (kPackedFp4) takes the packed conversion on that path (`f` then unused), and fills
// `f` from `y` for the other blocks; every other case arrives with `f` filled.
template <int FMT, typename T, int V>
__device__ __forceinline__ void quantize_slot(const MxQuantParams& p, float (&f)[V], const Pack<T, V>& y, float amax,
                                              const Nvfp4Global& g, void* q_at, uint8_t* scale_at, bool first) {
  const bool nan_block = amax != amax;
  // In the floor/ceil/even modes a NaN element stays itself (the division keeps it): its code is
  // the format's NaN with the element's sign. (In rceil and NVFP4 a NaN block's every element is
  // the factor's positive NaN, which the conversions give as they are.)
  const bool keep_nan_sign = FMT != kFmtNvfp4 && nan_block && p.scale_mode != mx::ScaleMode::kRceil;
  bool slow = nan_block;
  uint8_t byte;
  float mult;  // the fast path's factor: x * mult
  [[maybe_unused]] mx::Nvfp4Block b;
  [[maybe_unused]] float factor;
  if constexpr (FMT == kFmtNvfp4) {
    b = nvfp4_block(amax, g, p.global_scale_is_multiplier);
    byte = b.scale;
    slow = !(amax <= mx::kF32Max) || !(b.factor > 0.0f && b.factor <= mx::kF32Max);
    mult = b.factor;
  } else {
    constexpr mx::ElemFormat elem = FMT == kFmtE4m3 ? mx::ElemFormat::kE4m3
                                    : FMT == kFmtE5m2 ? mx::ElemFormat::kE5m2
                                                      : mx::ElemFormat::kE2m1;
    byte = mx::mx_block_scale(amax, elem, p.scale_mode);
    factor = mx::mx_block_factor(byte, p.scale_mode);
    // (A block without a NaN has a finite, nonzero power-of-two factor.)
    mult = p.scale_mode == mx::ScaleMode::kRceil ? factor : BlockDivisor(factor).recip;
  }
  if (first) *scale_at = byte;
#if FK_PACKED_E2M1
  if constexpr (kPackedFp4<FMT, T>) {
    if (!slow && (FMT == kFmtNvfp4 || amax >= 0x1p-118f)) {
      const uint32_t word = e2m1_word_bf16<FMT>(y, mult);
      store_fp4_word<V>(q_at, word);
      return;
    }
    to_floats(y, f);
  }
#endif
  if constexpr (FMT == kFmtNvfp4) {
    if (!slow) {
#pragma unroll
      for (int k = 0; k < V; ++k) f[k] *= b.factor;
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k)
        f[k] = mx::clamp_keep_nan(mx::mul_by_factor(f[k], b.factor), -mx::kE2m1Max, mx::kE2m1Max);
    }
  } else {
    const BlockDivisor d(factor);
    if (!slow) {
#pragma unroll
      for (int k = 0; k < V; ++k) f[k] *= mult;
    } else if (p.scale_mode == mx::ScaleMode::kRceil) {
#pragma unroll
      for (int k = 0; k < V; ++k) f[k] = mx::mul_by_factor(f[k], factor);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) f[k] = d.apply(f[k]);
    }
  }
  if constexpr (FMT == kFmtE4m3 || FMT == kFmtE5m2) {
    Pack<uint8_t, V> q;
    uint16_t* q2 = reinterpret_cast<uint16_t*>(q.v);
#pragma unroll
    for (int k = 0; k < V / 2; ++k) q2[k] = static_cast<uint16_t>(fp8_pair<FMT>(f[2 * k], f[2 * k + 1], slow));
    if (keep_nan_sign) {
      const uint32_t neg = sign_bits(y);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (nan_bits(f[k])) q.v[k] = static_cast<uint8_t>(0x7F | (((neg >> k) & 1u) << 7));
    }
    *reinterpret_cast<Pack<uint8_t, V>*>(q_at) = q;
  } else {
    // Packed FP4: element 2i in the low nibble of byte i. MXFP4's factor leaves values beyond 6
    // (floor mode), which the conversion saturates as the spec's clamp does.
    uint32_t word = 0;
#pragma unroll
    for (int k = 0; k < V / 2; ++k) word |= e2m1_pair(f[2 * k], f[2 * k + 1], slow) << (8 * k);
    if (keep_nan_sign) {
      const uint32_t neg = sign_bits(y);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (nan_bits(f[k])) word = (word & ~(0xFu << (4 * k))) | ((7u | (((neg >> k) & 1u) << 3)) << (4 * k));
    }
    store_fp4_word<V>(q_at, word);
  }
}

// A block's scale byte and its fast-path factor, computed once by the lane that owns the block
// on the scattered path (the arithmetic of quantize_slot's first lines). `mult` is NaN for a
// block that takes the spec's element-by-element path (quantize_slot's `slow`), and negated for
// an MXFP4 block of bf16 rows below the packed conversion's range (absmax < 2^-118), which takes
// the float conversion; every other block's mult is finite and > 0.
struct MxBlockFactor {
  uint8_t byte;
  float mult;
};

template <int FMT, typename T>
__device__ __forceinline__ MxBlockFactor block_factor(const MxQuantParams& p, float amax, const Nvfp4Global& g) {
  MxBlockFactor r;
  bool slow = amax != amax;
  if constexpr (FMT == kFmtNvfp4) {
    const mx::Nvfp4Block b = nvfp4_block(amax, g, p.global_scale_is_multiplier);
    r.byte = b.scale;
    slow = !(amax <= mx::kF32Max) || !(b.factor > 0.0f && b.factor <= mx::kF32Max);
    r.mult = b.factor;
  } else {
    constexpr mx::ElemFormat elem = FMT == kFmtE4m3 ? mx::ElemFormat::kE4m3
                                    : FMT == kFmtE5m2 ? mx::ElemFormat::kE5m2
                                                      : mx::ElemFormat::kE2m1;
    r.byte = mx::mx_block_scale(amax, elem, p.scale_mode);
    const float factor = mx::mx_block_factor(r.byte, p.scale_mode);
    r.mult = p.scale_mode == mx::ScaleMode::kRceil ? factor : BlockDivisor(factor).recip;
  }
  if (slow) {
    r.mult = mx::float_of(0x7FC00000u);
  } else if (kPackedFp4<FMT, T> && FMT == kFmtMxfp4 && !(amax >= 0x1p-118f)) {
    r.mult = -r.mult;
  }
  return r;
}

// A slot of a fast-path block (block_factor's mult, not NaN) converted and stored: the bytes of
// quantize_slot's path for such a block.
template <int FMT, typename T, int V>
__device__ __forceinline__ void convert_fast(const Pack<T, V>& y, float mult, void* q_at) {
#if FK_PACKED_E2M1
  if constexpr (kPackedFp4<FMT, T>) {
    if (mult > 0.0f) {
      const uint32_t word = e2m1_word_bf16<FMT>(y, mult);
      store_fp4_word<V>(q_at, word);
      return;
    }
    mult = -mult;
  }
#endif
  float f[V];
  to_floats(y, f);
#pragma unroll
  for (int k = 0; k < V; ++k) f[k] *= mult;
  if constexpr (FMT == kFmtE4m3 || FMT == kFmtE5m2) {
    Pack<uint8_t, V> q;
    uint16_t* q2 = reinterpret_cast<uint16_t*>(q.v);
#pragma unroll
    for (int k = 0; k < V / 2; ++k) q2[k] = static_cast<uint16_t>(fp8_pair<FMT>(f[2 * k], f[2 * k + 1], false));
    *reinterpret_cast<Pack<uint8_t, V>*>(q_at) = q;
  } else {
    uint32_t word = 0;
#pragma unroll
    for (int k = 0; k < V / 2; ++k) word |= e2m1_pair(f[2 * k], f[2 * k + 1], false) << (8 * k);
    store_fp4_word<V>(q_at, word);
  }
}

}  // namespace dev
}  // namespace fusion_kernels
