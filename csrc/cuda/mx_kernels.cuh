// SPDX-License-Identifier: Apache-2.0
// Device code of the microscaling quant ops (MXFP8, MXFP4, NVFP4): [residual add ->] [RMSNorm ->]
// block-scaled quantization of each row. Raw pointers only (MxQuantParams, mx_params.h).
//
// The norm stage is the row op's, step for step: the same thread mapping (kernel_config.cuh, fixed
// by H alone), the same order of the sum of squares and the same rounding points (norm.cuh), so a
// fused op's normalised row equals what rms_norm / fused_add_rms_norm write, bit for bit, and the
// fused op equals the norm op followed by the unfused quant op.
//
// The quantizer is microscaling.h's scalar code (the spec's, checked exhaustively on the CPU by
// .ci/mx_math.cpp; NVFP4's block scale its steps with the e4m3 conversions in hardware,
// dev::nvfp4_block), so the GPU's bytes are the CPU kernels' bytes. A block of 32 (16 for NVFP4)
// elements is 2 to 8 consecutive 16-byte slots, which the mapping gives to consecutive lanes of a
// run. Where those lanes hold whole groups of blocks (quant_run), their slots' absmaxes are
// reduce-scattered and each lane derives one block's scale and stores it, the others receiving
// its factor by a shuffle; otherwise (quant_slot) a butterfly gives every lane of the block its
// absmax, every lane derives the same scale, and the block's first lane stores the scale byte.
// Each lane converts its own slots (mx_slot.cuh). The element conversions (mx_convert.cuh): e4m3
// and e5m2 in hardware on sm_89+ (saturating, as the clamp before the spec's conversion), FP4 e2m1
// in hardware where the arch-specific targets have it (sm_100a/103a/120a, the sm_100f/120f
// families), else in packed bf16 arithmetic for bf16 rows; elsewhere, and for the elements of a
// block holding a NaN (whose sign the hardware does not keep), the spec's software conversions.
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"
#include "cuda/mx_convert.cuh"
#include "cuda/mx_slot.cuh"
#include "cuda/norm.cuh"
#include "cuda/reductions.cuh"
#include "microscaling.h"
#include "mx_params.h"

namespace fusion_kernels {
namespace dev {

#ifndef FK_MX_SCATTER  // 1: each lane of a block derives one block's scale per group of slots (mx_kernel's
#define FK_MX_SCATTER 1  // quant_run); 0: every lane every block's, slot by slot (quant_slot)
#endif

#ifndef FK_MX_MIN_BLOCKS  // __launch_bounds__ minimum resident blocks of kMaxThreads (2: 64 registers)
#define FK_MX_MIN_BLOCKS 2  // of the register-cached kernels (the re-reading ones, for rows longer than
#endif                      // the registers hold and misaligned rows, take what they need)

// The 128x4 swizzled scale buffer's padding (rows T..ceil(T / 128) * 128 - 1, every column),
// zeroed 4 bytes at a time (the 4 scale columns of a row in a tile are contiguous) by the
// blocks after the row blocks. The real rows' column padding is written with their scales.
__device__ __forceinline__ void zero_swizzle_row_padding(const MxQuantParams& p, int64_t col_tiles, int64_t pad_block,
                                                         int64_t pad_blocks) {
  const int64_t rows_padded = (p.rows + 127) / 128 * 128;
  const int64_t words = (rows_padded - p.rows) * col_tiles;
  const int64_t threads = static_cast<int64_t>(blockDim.x) * blockDim.y;
  for (int64_t w = pad_block * threads + threadIdx.y * blockDim.x + threadIdx.x; w < words; w += pad_blocks * threads) {
    const int64_t r = p.rows + w / col_tiles;
    const int64_t ct = w % col_tiles;
    *reinterpret_cast<uint32_t*>(p.scales + mx::swizzled_offset(r, 4 * ct, col_tiles)) = 0u;
  }
}

// One row per blockDim.y of a block (tpr = blockDim.x threads each); blocks from `row_groups *
// split` on zero the swizzled padding. CACHED: the row in registers (kCachedSlots slots a thread),
// else re-read for the quantization (from L2). A few rows of a norm op (CACHED && NORM) may be
// split over `split` blocks, as the row op's latency variant splits them: each of a row's blocks
// reads the whole row and reduces its squares in the same order (the same normalised row), and
// converts and stores only its share of the thread's slots (i * split / S == part: a whole
// microscaling block, whose lanes share i), with the new residual and the scales of that share.
template <typename T, typename W, int FMT, bool NORM, bool RES, bool ALIGNED, bool CACHED>
__global__ void __launch_bounds__(kMaxThreads, CACHED ? FK_MX_MIN_BLOCKS : 1)
    mx_kernel(const MxQuantParams p, const int64_t row_groups, const int split_log2) {
  constexpr int V = 16 / sizeof(T);
  constexpr int BLOCK = block_elems<FMT>();
  constexpr int SB = BLOCK / V;  // slots per block: consecutive lanes of a run
  static_assert(SB >= 1 && SB <= kRunLanes && (SB & (SB - 1)) == 0, "a block lies in one run of lanes");
  constexpr bool FP4 = FMT == kFmtMxfp4 || FMT == kFmtNvfp4;
  constexpr int S = CACHED ? kCachedSlots : 1;
  using TPack = Pack<T, V>;
  using WPack = Pack<W, V>;
  static_assert(!RES || NORM, "the residual add exists only with the norm");
  __shared__ float red_sum[kMaxThreads / kWarpSize];

  // Nothing is read before the previous kernel on the stream has finished.
  grid_dependency_wait();
  grid_dependents_launch();

  const int H = static_cast<int>(p.hidden);
  const int64_t cols = H / BLOCK;
  const int64_t col_tiles = (cols + 3) / 4;
  constexpr bool SPLIT = CACHED && NORM;
  const int split = SPLIT ? 1 << split_log2 : 1;  // a power of two (its log2 from the launcher)
  const int64_t row_blocks = row_groups * split;
  if (static_cast<int64_t>(blockIdx.x) >= row_blocks) {
    zero_swizzle_row_padding(p, col_tiles, blockIdx.x - row_blocks, gridDim.x - row_blocks);
    return;
  }
  const int part = SPLIT ? static_cast<int>(blockIdx.x & (split - 1)) : 0;
  auto mine = [&](int i) { return !SPLIT || (i * split) / S == part; };

  const int tpr = blockDim.x;
  const int lane = threadIdx.x;
  const int nslots = H / V;
  const int lane_base = (lane / kRunLanes) * (kRunLanes * kRun) + lane % kRunLanes;
  auto slot_of = [&](int j) { return (j / kRun) * (kRun * tpr) + (j % kRun) * kRunLanes + lane_base; };
  const int loops = CACHED ? S : kRun * ((nslots + kRun * tpr - 1) / (kRun * tpr));

  const int64_t row = static_cast<int64_t>(blockIdx.x >> (SPLIT ? split_log2 : 0)) * blockDim.y + threadIdx.y;
  const bool valid = row < p.rows;
  const T* __restrict__ x = static_cast<const T*>(p.input) + row * p.input_row_stride;
  const T* __restrict__ res = static_cast<const T*>(p.residual) + row * p.residual_row_stride;
  T* __restrict__ res_out = static_cast<T*>(p.residual_out) + row * H;
  const W* __restrict__ w_base = static_cast<const W*>(p.weight);

  // r = T(x + residual), optionally written out as the new residual (norm.cuh).
  auto load_row_slot = [&](int slot, TPack& r, bool write_res) {
    load_pack<ALIGNED>(x, slot * V, H, r);
    if constexpr (RES) {
      TPack rs;
      load_pack<ALIGNED>(res, slot * V, H, rs);
      add_residual(r, rs);
      if (write_res) store_pack<ALIGNED>(res_out, slot * V, H, r);
    }
  };

  // CACHED: the row's slots (and the norm weight's) in registers, every load issued before any
  // use (one memory latency per row; the weight's behind the reduction).
  // (An fp32 weight of a 16-bit row would take twice the registers and spill: it is read slot by
  // slot after the reduction instead.)
  constexpr bool WCACHE = CACHED && NORM && std::is_same_v<W, T>;
  TPack rows_cache[S];
  WPack w_cache[WCACHE ? S : 1];
  if constexpr (CACHED) {
    TPack res_cache[RES ? S : 1];
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int slot = slot_of(i);
      if (valid && slot < nslots) {
        load_pack<ALIGNED>(x, slot * V, H, rows_cache[i]);
        if constexpr (RES) load_pack<ALIGNED>(res, slot * V, H, res_cache[i]);
      }
    }
    if constexpr (WCACHE) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int slot = slot_of(i);
        if (valid && slot < nslots && mine(i)) load_pack<ALIGNED>(w_base, slot * V, H, w_cache[i]);
      }
    }
    if constexpr (RES) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int slot = slot_of(i);
        if (valid && slot < nslots) {
          add_residual(rows_cache[i], res_cache[i]);
          if (mine(i)) store_pack<ALIGNED>(res_out, slot * V, H, rows_cache[i]);
        }
      }
    }
  }
  // The global scale is read here, after the row's loads were issued, so its latency overlaps.
  Nvfp4Global g{0.0f, 0.0f};
  if constexpr (FMT == kFmtNvfp4) {
    g.g = *p.global_scale;
    g.recip = 1.0f / g.g;
  }
  float inv = 1.0f;
  if constexpr (NORM) {
    float acc0 = 0.0f, acc1 = 0.0f;
    if constexpr (CACHED) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        if (valid && slot_of(i) < nslots) accumulate_squares<CACHED>(rows_cache[i], acc0, acc1);
      }
    } else {
      for (int j = 0; j < loops; ++j) {
        const int slot = slot_of(j);
        if (valid && slot < nslots) {
          TPack r;
          load_row_slot(slot, r, true);
          accumulate_squares(r, acc0, acc1);
        }
      }
    }
    const float sumsq = row_reduce<false>(acc0 + acc1, red_sum);
    inv = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, static_cast<float>(H)), p.epsilon)));
  }

  uint8_t* __restrict__ const q_row = static_cast<uint8_t*>(p.out) + row * (FP4 ? H / 2 : H);
  // Block b's scale byte of this row (mx::swizzled_offset, the row's part taken once).
  const int64_t scale_row =
      p.swizzled ? 512 * ((row / 128) * col_tiles) + 16 * (row % 32) + 4 * ((row % 128) / 32) : row * cols;
  auto scale_ptr = [&](int b) { return p.scales + scale_row + (p.swizzled ? 512 * (b >> 2) + (b & 3) : b); };
  // The row's columns of the last tile beyond its scales are padding: zeros.
  auto zero_column_padding = [&](int b) {
    if (p.swizzled && b == cols - 1) {
      for (int c = static_cast<int>(cols); c < 4 * col_tiles; ++c) *scale_ptr(c) = 0;
    }
  };
  // A chunk of kRun slots a thread at a time (the whole row when it is in registers): the
  // chunk's loads first, then per slot the block's absmax, scale and conversion. Every lane runs
  // every step (the butterfly needs the whole warp); absent slots are zeros.
  auto quant_slot = [&](int slot, TPack& y, const WPack& w) {
    const bool has = valid && slot < nslots;
    float f[V];
    float amax = 0.0f;
    if (has) {
      if constexpr (NORM) normalize<CACHED>(y, inv, w);
      if constexpr (kPackedFp4<FMT, T>) {
        AbsMax<T> m;  // a pair per instruction; f only where a block needs it (quantize_slot)
        m.add(y);
        amax = m.value();
      } else {
        to_floats(y, f);
#pragma unroll
        for (int k = 0; k < V; ++k) amax = nan_max(fabsf(f[k]), amax);
      }
    }
#pragma unroll
    for (int o = 1; o < SB; o <<= 1) amax = nan_max(amax, shfl_xor(amax, o));
    if (has) {
      const int b = slot / SB;
      const bool first = (slot & (SB - 1)) == 0;
      quantize_slot<FMT>(p, f, y, amax, g, q_row + (FP4 ? slot * (V / 2) : slot * V), scale_ptr(b), first);
      if (first) zero_column_padding(b);
    }
  };
  // The scattered form of kRun slots a thread (slot_of(i0) .. slot_of(i0 + kRun - 1)), where the
  // SB lanes of a block hold kRun / SB whole groups of SB blocks: each slot's absmax over its
  // lanes is reduce-scattered (lane j of a block's lanes ends with the absmax of the block its
  // slot j of the group lies in), so each lane derives one block's scale, factor and scale address
  // per group instead of every lane every block's; the factors come back by index shuffles.
  // Blocks on the spec's element-by-element path (a NaN, or an NVFP4 factor out of range) are
  // rare: when a lane of the warp has one, the warp reduces every slot's absmax again, as
  // quant_slot does, and those slots take quantize_slot's path. Same bytes as quant_slot.
  constexpr bool kScatter = FK_MX_SCATTER && SB <= kRun;
  constexpr int G = kScatter ? kRun / SB : 1;  // groups of SB slots a thread
  auto slot_absmax = [&](const TPack& y) {
    float a = 0.0f;
    if constexpr (kPackedFp4<FMT, T>) {
      AbsMax<T> m;  // a pair per instruction
      m.add(y);
      a = m.value();
    } else {
      float f[V];
      to_floats(y, f);
#pragma unroll
      for (int k = 0; k < V; ++k) a = nan_max(fabsf(f[k]), a);
    }
    return a;
  };
  auto quant_run = [&](int i0, TPack (&y)[kRun], auto&& weight_of) {
    float amax[kRun];
#pragma unroll
    for (int i = 0; i < kRun; ++i) {
      const int slot = slot_of(i0 + i);
      amax[i] = 0.0f;
      if (valid && slot < nslots) {
        if constexpr (NORM) normalize<CACHED>(y[i], inv, weight_of(i, slot));
        amax[i] = slot_absmax(y[i]);
      }
    }
    const int j = lane & (SB - 1);
    float mult[G];
    bool any_slow = false;
#pragma unroll
    for (int gi = 0; gi < G; ++gi) {
      float v[SB];
#pragma unroll
      for (int t = 0; t < SB; ++t) v[t] = amax[gi * SB + t];
#pragma unroll
      for (int o = SB / 2, n = SB / 2; o >= 1; o >>= 1, n >>= 1) {
        const bool hi = (lane & o) != 0;
#pragma unroll
        for (int k = 0; k < n; ++k) {
          const float keep = hi ? v[k + n] : v[k];
          const float give = hi ? v[k] : v[k + n];
          v[k] = nan_max(keep, shfl_xor(give, o));
        }
      }
      const MxBlockFactor bf = block_factor<FMT, T>(p, v[0], g);
      mult[gi] = bf.mult;
      any_slow |= bf.mult != bf.mult;
      const int slot = slot_of(i0 + gi * SB + j);
      if (valid && slot < nslots) {
        const int b = slot / SB;
        *scale_ptr(b) = bf.byte;
        zero_column_padding(b);
      }
    }
    any_slow = warp_any(any_slow);
#pragma unroll
    for (int i = 0; i < kRun; ++i) {
      const int slot = slot_of(i0 + i);
      const bool has = valid && slot < nslots;
      const float m = shfl_idx(mult[i / SB], i % SB, SB);
      float a = 0.0f;
      if (any_slow) {  // (uniform over the warp)
        if (has) a = slot_absmax(y[i]);
#pragma unroll
        for (int o = 1; o < SB; o <<= 1) a = nan_max(a, shfl_xor(a, o));
      }
      if (!has) continue;
      void* q_at = q_row + (FP4 ? slot * (V / 2) : slot * V);
      if (m == m) {
        convert_fast<FMT>(y[i], m, q_at);
      } else {
        float f[V];
        to_floats(y[i], f);
        quantize_slot<FMT>(p, f, y[i], a, g, q_at, nullptr, false);
      }
    }
  };
  if constexpr (CACHED && kScatter) {
    if (split == 1) {
      // (A generic weight_of: instantiated only where the norm calls it.)
      quant_run(0, rows_cache, [&](auto i, auto slot) {
        if constexpr (WCACHE) {
          return w_cache[i];
        } else {
          WPack w;
          load_pack<ALIGNED>(w_base, slot * V, H, w);
          return w;
        }
      });
      return;
    }
  }
  if constexpr (CACHED) {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      if (!mine(i)) continue;  // (uniform over the block: i is)
      const int slot = slot_of(i);
      if constexpr (WCACHE || !NORM) {
        quant_slot(slot, rows_cache[i], w_cache[WCACHE ? i : 0]);
      } else {
        WPack w;
        if (valid && slot < nslots) load_pack<ALIGNED>(w_base, slot * V, H, w);
        quant_slot(slot, rows_cache[i], w);
      }
    }
  } else {
    // (The weight slot by slot: a chunk's weight in registers too would spill.)
    for (int c = 0; c < loops; c += kRun) {
      TPack y[kRun];
#pragma unroll
      for (int i = 0; i < kRun; ++i) {
        const int slot = slot_of(c + i);
        if (valid && slot < nslots) load_row_slot(slot, y[i], !NORM);
      }
      if constexpr (kScatter) {
        quant_run(c, y, [&](auto, auto slot) {
          WPack w;
          load_pack<ALIGNED>(w_base, slot * V, H, w);
          return w;
        });
      } else {
#pragma unroll
        for (int i = 0; i < kRun; ++i) {
          const int slot = slot_of(c + i);
          WPack w;
          if (NORM && valid && slot < nslots) load_pack<ALIGNED>(w_base, slot * V, H, w);
          quant_slot(slot, y[i], w);
        }
      }
    }
  }
}

}  // namespace dev
}  // namespace fusion_kernels
