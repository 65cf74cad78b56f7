// SPDX-License-Identifier: Apache-2.0
// Device code of the row op ([residual add] -> [RMSNorm] -> [quantize]). Raw pointers only.
// The thread mapping, which H alone fixes, is described in kernel_config.cuh.
//
// Rounding points (the spec, fusion_kernels/reference.py):
//   r = T(x + residual); y = T(T(r * rsqrt(mean(r^2) + eps)) * w); q = quant(y * (1 / scale)).
// The kernels are compute-bound at HBM speed unless the per-element work is small, so 16-bit
// inputs use packed pair instructions (one rounding each, exactly the spec's), the scale is
// applied as a multiply by its correctly rounded reciprocal, and the 8-bit conversions saturate
// in hardware.
#pragma once

#include "cuda/compat.cuh"
#include "cuda/group_quant.cuh"
#include "cuda/kernel_config.cuh"
#include "cuda/memory.cuh"
#include "cuda/norm.cuh"
#include "cuda/quantizers.cuh"
#include "cuda/reductions.cuh"
#include "row_op.h"

namespace fusion_kernels {
namespace dev {

// Two variants of the register-cached normalizing kernel, identical in arithmetic (so in
// results): the latency variant (WREGS) loads the norm weight into registers together with the
// row, which saves a dependent round trip when there are few rows; the throughput variant runs
// under a register budget per variant (min_blocks), so more blocks, and more rows' loads, are in
// flight per SM, and gets the weight without registers: copied into shared memory as the block
// starts (WSMEM), or else read after the reduction (from L1/L2). The launcher picks by the size
// of the grid. RULE: the dynamic quant modes' scale rule is the rule ops' runtime p.rule, else
// the fixed rule of the mode, a compile-time constant (kernel_rule, quantizers.cuh): two
// instantiations of the same code, so the fixed-rule ops' kernels compile as they did before
// the rule ops existed.
template <typename T, typename W, OutKind OUT, QuantMode Q, bool RULE, int GRUN, bool NORM, bool RES, bool ALIGNED, bool CACHED,
          bool WREGS = false, bool WSMEM = false, bool WIDE = false>
__global__ void __launch_bounds__((max_threads<WIDE>()), (min_blocks<Q, RES, WREGS, WIDE>()))
    row_op_kernel(const RowOpParams p, const int split_log2) {
  constexpr int V = 16 / sizeof(T);
  constexpr int S = CACHED ? kCachedSlots : 1;  // slots held in registers
  using TPack = Pack<T, V>;
  using WPack = Pack<W, V>;
  static_assert(OUT == OutKind::kPlain || Q != QuantMode::kNone, "quantized output needs a quant mode");

  __shared__ float red_sum[kMaxThreads / kWarpSize];
  __shared__ float red_max[kMaxThreads / kWarpSize];
  static_assert(!WSMEM || weight_in_smem<NORM, ALIGNED, CACHED, WREGS>(), "no staged weight in this variant");
  extern __shared__ uint4 dyn_smem[];

  const int tpr = blockDim.x;
  const int lane = threadIdx.x;
  // WSMEM: this thread's weight slot i at w_smem[i * tpr] (the slots of a row's threads side by side).
  WPack* const w_smem = reinterpret_cast<WPack*>(dyn_smem) + threadIdx.y * S * tpr + lane;
  // Latency variant, a row split over `split` blocks (on different SMs): each block reads the
  // whole row and reduces it exactly as one block would (so the same bits), then normalizes,
  // quantizes and stores only its share of the slots: every thread's slots i with
  // i * split / S == part. Less of the per-element work and of the writes per SM. `split` is a
  // power of two (the launcher passes its log2): the block's row group and part by a shift and a
  // mask, not an integer division on the way to the first load.
  const int split = WREGS ? 1 << split_log2 : 1;
  const int part = WREGS ? static_cast<int>(blockIdx.x & (split - 1)) : 0;
  // kPerGroup: a group is group_slots consecutive slots (a power of two; 1 otherwise). A thread's
  // slots j of a chunk fall into runs of GRUN consecutive j in one group each.
  const int group_slots = Q == QuantMode::kPerGroup ? static_cast<int>(p.group_size / V) : 1;
  const int group_shift = __ffs(group_slots) - 1;
  auto mine = [&](int i) { return !WREGS || (i * split) / S == part; };
  // Slots whose y a block needs: its own, and for per-token every slot (the row's absmax).
  // For the group quant, every slot of a run of a thread's slots that share a group (GRUN) with
  // one of the block's own.
  auto needs_y = [&](int i) {
    if constexpr (Q == QuantMode::kPerToken) return true;
    if constexpr (Q == QuantMode::kPerGroup && WREGS) {
      const int first = i & ~(GRUN - 1);
      bool any = false;
#pragma unroll
      for (int t = 0; t < GRUN; ++t) any = any || mine(first + t);
      return any;
    }
    return mine(i);
  };
  const int64_t first_rg = WREGS ? blockIdx.x >> split_log2 : blockIdx.x;
  const int64_t rg_stride = WREGS ? gridDim.x >> split_log2 : gridDim.x;
  // In-row offsets are 32-bit (the host checks H <= kMaxHidden): fewer registers per slot.
  const int H = static_cast<int>(p.hidden);
  const int nslots = (H + V - 1) / V;
  // Thread `lane`'s j-th slot of the row (the mapping in kernel_config.cuh): runs of kRunLanes
  // lanes own kRunLanes * kRun consecutive slots, kRun each, interleaved so that every load
  // instruction of the run reads kRunLanes * 16 contiguous bytes.
  const int lane_base = (lane / kRunLanes) * (kRunLanes * kRun) + lane % kRunLanes;
  auto slot_of = [&](int j) { return (j / kRun) * (kRun * tpr) + (j % kRun) * kRunLanes + lane_base; };
  const int loops = CACHED ? S : kRun * ((nslots + kRun * tpr - 1) / (kRun * tpr));
  // Only the aligned register-cached path prefetches (the element-wise path would spill).
  constexpr bool PIPE = CACHED && ALIGNED && FK_PIPELINE;
  const T* __restrict__ in_base = static_cast<const T*>(p.input);
  const T* __restrict__ res_base = static_cast<const T*>(p.residual);
  const W* __restrict__ w_base = static_cast<const W*>(p.weight);

  // Nothing is read before the previous kernel on the stream has finished; the next one may
  // start launching now (it waits the same way before touching memory).
  grid_dependency_wait();
  grid_dependents_launch();

  static_assert(!WREGS || (CACHED && NORM), "the latency variant is the register-cached norm kernel");
  // Many rows (the throughput variant): the row is read once and q written once, so neither
  // should displace other data from the caches. Few rows (the latency variant) keep the default,
  // so the next kernel (the FP8 matmul) finds q in L2.
  constexpr bool STRM = FK_STREAMING && CACHED && !WREGS;
  // The latency variant's norm weight, only the slots this block normalizes: requested after
  // the row's loads, which the reduction needs first (measured, BENCHMARKS.md items 27, 29).
  WPack wc[WREGS ? S : 1];
  auto load_weight_regs = [&]() {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int slot = slot_of(i);
      if (slot < nslots && needs_y(i)) load_pack<ALIGNED>(w_base, slot * V, H, wc[i]);
    }
  };
  const bool weight_after_row = FK_WEIGHT_AFTER_ROW == 1 || (FK_WEIGHT_AFTER_ROW == 2 && split > 1);
  if constexpr (WREGS) {
    if (!weight_after_row) load_weight_regs();
  }

  // Software pipelining (register-cached path): the next row group's loads are issued before
  // this one is processed, so every block keeps a row of loads in flight while it computes.
  TPack next_x[PIPE ? S : 1], next_r[PIPE && RES ? S : 1];
  auto issue_loads = [&](int64_t rg_, TPack (&xd)[PIPE ? S : 1], TPack (&rd)[PIPE && RES ? S : 1]) {
    const int64_t row_ = rg_ * blockDim.y + threadIdx.y;
    if (row_ >= p.rows) return;
    const T* xr = in_base + row_ * p.input_row_stride;
    const T* rr = res_base + row_ * p.residual_row_stride;
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int slot = slot_of(i);
      if (slot < nslots) {
        load_pack<ALIGNED>(xr, slot * V, H, xd[i]);
        if constexpr (RES) load_pack<ALIGNED>(rr, slot * V, H, rd[i]);
      }
    }
  };
  if constexpr (PIPE) issue_loads(blockIdx.x, next_x, next_r);

  for (int64_t rg = first_rg; rg * blockDim.y < p.rows; rg += rg_stride) {
    const int64_t row = rg * blockDim.y + threadIdx.y;
    const bool valid = row < p.rows;
    const T* x = in_base + row * p.input_row_stride;
    const T* res = res_base + row * p.residual_row_stride;
    T* res_out = static_cast<T*>(p.residual_out) + row * H;

    // r = T(x + residual), optionally written out as the new residual.
    auto load_row_slot = [&](int slot, TPack& r, bool write_res) {
      load_pack<ALIGNED>(x, slot * V, H, r);
      if constexpr (RES) {
        TPack rs;
        load_pack<ALIGNED>(res, slot * V, H, rs);
        add_residual(r, rs);
        if (write_res) store_pack<ALIGNED>(res_out, slot * V, H, r);
      }
    };

    TPack rows_cache[S];
    float inv = 1.0f;
    // The throughput variant's norm weight when it is not staged in shared memory: all of a
    // thread's slots requested at once (one round trip, not one per slot), before
    // (FK_WEIGHT_LOADS 2) or after (1) the row's reduction, or each slot as it is used (0).
    constexpr int kWeightLoads = (Q == QuantMode::kStatic || Q == QuantMode::kNone) ? FK_WEIGHT_LOADS_STATIC : FK_WEIGHT_LOADS;
    WPack wv[CACHED && NORM && !WREGS && !WSMEM && kWeightLoads ? S : 1];
    auto load_weights = [&]() {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int slot = slot_of(i);
        if (slot < nslots) load_pack<ALIGNED>(w_base, slot * V, H, wv[i]);
      }
    };
    if constexpr (CACHED) {
      TPack res_cache[RES ? S : 1];
      if constexpr (PIPE) {
#pragma unroll
        for (int i = 0; i < S; ++i) {
          rows_cache[i] = next_x[i];
          if constexpr (RES) res_cache[i] = next_r[i];
        }
        issue_loads(rg + gridDim.x, next_x, next_r);
      } else {
        // Issue every load of the row before using any of it (one memory latency per row).
#pragma unroll
        for (int i = 0; i < S; ++i) {
          const int slot = slot_of(i);
          if (valid && slot < nslots) {
            load_pack<ALIGNED, STRM>(x, slot * V, H, rows_cache[i]);
            if constexpr (RES) load_pack<ALIGNED, STRM>(res, slot * V, H, res_cache[i]);
          }
        }
        if constexpr (WREGS) {
          if (weight_after_row && rg == first_rg) load_weight_regs();
        }
      }
      if constexpr (WSMEM) {
        if (rg == first_rg) {
#pragma unroll
          for (int i = 0; i < S; ++i) {
            const int slot = slot_of(i);
            if (slot < nslots) async_copy_pack(&w_smem[i * tpr], w_base + slot * V);
          }
        }
      }
      float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int slot = slot_of(i);
        if (valid && slot < nslots) {
          if constexpr (RES) {
            add_residual(rows_cache[i], res_cache[i]);
            if (mine(i)) store_pack<ALIGNED, STRM>(res_out, slot * V, H, rows_cache[i]);
          }
          if constexpr (NORM) accumulate_squares(rows_cache[i], acc0, acc1);
        }
      }
      if constexpr (NORM) {
        if constexpr (!WREGS && !WSMEM && kWeightLoads == 2) load_weights();
        const float sumsq = row_reduce<false>(acc0 + acc1, red_sum);
        inv = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, static_cast<float>(H)), p.epsilon)));
      }
    } else if constexpr (NORM) {
      float acc0 = 0.0f, acc1 = 0.0f;
      for (int j = 0; j < loops; ++j) {
        const int slot = slot_of(j);
        if (valid && slot < nslots) {
          load_row_slot(slot, rows_cache[0], true);
          accumulate_squares(rows_cache[0], acc0, acc1);
        }
      }
      const float sumsq = row_reduce<false>(acc0 + acc1, red_sum);
      inv = __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, static_cast<float>(H)), p.epsilon)));
    }

    // y of a slot: in the cached path computed once into rows_cache, else recomputed from memory.
    auto y_slot_uncached = [&](int slot, TPack& y) {
      load_row_slot(slot, y, !NORM);
      if constexpr (NORM) {
        WPack w;
        load_pack<ALIGNED>(w_base, slot * V, H, w);
        normalize(y, inv, w);
      }
    };
    if constexpr (CACHED && NORM) {
      if constexpr (WSMEM) {
        async_copy_wait_all();
      } else if constexpr (!WREGS && kWeightLoads == 1) {
        load_weights();
      }
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int slot = slot_of(i);
        if (valid && slot < nslots && needs_y(i)) {
          if constexpr (WREGS) {
            normalize(rows_cache[i], inv, wc[i]);
          } else if constexpr (WSMEM) {
            normalize(rows_cache[i], inv, w_smem[i * tpr]);
          } else if constexpr (kWeightLoads) {
            normalize(rows_cache[i], inv, wv[i]);
          } else {
            WPack w;
            load_pack<ALIGNED>(w_base, slot * V, H, w);
            normalize(rows_cache[i], inv, w);
          }
        }
      }
    }
    auto get_y = [&](int i, int slot, TPack& y) {
      if constexpr (CACHED) {
        y = rows_cache[i];
      } else {
        y_slot_uncached(slot, y);
      }
    };

    // The rule ops' quotient rounded to T before the cast (a constant false in the fixed rules).
    [[maybe_unused]] const bool round_q = RULE && p.rule.round_quotient;
    if constexpr (Q == QuantMode::kNone) {
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int slot = slot_of(j);
          if (valid && slot < nslots && mine(i)) {
            TPack y;
            get_y(i, slot, y);
            store_pack<ALIGNED, STRM>(static_cast<T*>(p.out) + row * H, slot * V, H, y);
          }
        }
    } else if constexpr (Q == QuantMode::kStatic || Q == QuantMode::kPerToken) {
      // Scalars are read here, after the row's loads were issued, so their latency overlaps.
      float inv_scale = 1.0f;
      if constexpr (Q == QuantMode::kStatic) inv_scale = __frcp_rn(*p.scale);
      if constexpr (Q == QuantMode::kPerToken) {
        AbsMax<T> am;
#pragma unroll
        for (int i = 0; i < (CACHED ? S : 1); ++i)
          for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
            const int slot = slot_of(j);
            if (valid && slot < nslots) {
              TPack y;
              get_y(i, slot, y);
              am.add(y);
            }
          }
        const float amax = row_reduce<true>(am.value(), red_max);
        const float scale = per_token_scale<OUT, RULE>(amax, p);
        if (valid && lane == 0 && part == 0) p.scales[row * p.scale_row_stride] = scale;
        inv_scale = reciprocal_of_scale<RULE>(scale);
      }
      // The rule ops' per-tensor first pass (per_tensor.h) writes the scales only.
      const bool store_q = !(RULE && Q == QuantMode::kPerToken) || p.out != nullptr;
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int slot = slot_of(j);
          if (valid && slot < nslots && mine(i)) {
            TPack y;
            get_y(i, slot, y);
            if constexpr (RULE) {  // the norm-output variants (rule ops only)
              if (p.norm_out != nullptr) store_pack<ALIGNED, STRM>(static_cast<T*>(p.norm_out) + row * H, slot * V, H, y);
            }
            if (store_q)
              store_pack<ALIGNED, STRM>(static_cast<uint8_t*>(p.out) + row * H, slot * V, H, quantize<OUT>(y, inv_scale, round_q));
          }
        }
    } else {  // kPerGroup
      // A chunk of kRun slots per thread at a time: the whole row when it is in registers,
      // else one chunk after the other, recomputed from memory.
      uint8_t* const q_row = static_cast<uint8_t*>(p.out) + row * H;
      // The norm-output variants (rule ops only): y stored beside q.
      auto store_norm = [&](int slot, const TPack& y) {
        if constexpr (RULE) {
          if (p.norm_out != nullptr) store_pack<ALIGNED, STRM>(static_cast<T*>(p.norm_out) + row * H, slot * V, H, y);
        }
      };
      const ScaleRule rule = kernel_rule<OUT, Q, RULE>(p);
      auto quant_chunk = [&](const TPack (&y)[kRun], const bool (&has)[kRun], const bool (&store)[kRun], int c) {
        constexpr int NG = kRun / GRUN;  // groups per thread per chunk
        // (A group spans at least kMinGroupSize / 8 >= NG lanes, as the scatter needs.)
        if constexpr (kIs16<T> && FK_GROUP_SCATTER && NG >= 2 && NG >= FK_GROUP_SCATTER && NG <= kMinGroupSize / 8) {
          // Each lane computes the scale of one group (group_scale_scattered) and reads the
          // reciprocal for each of its slots from a lane that holds the slot's group.
          const int width = group_slots / GRUN;
          const float scale = group_scale_scattered<GRUN, OUT, RULE>(y, has, width, lane, rule);
          const float inv_own = reciprocal_of_scale<RULE>(scale);
          // The group's scale is written by the one of its lanes that comes first in the group
          // (lane_in_group < NG), whose slot c * kRun + own * GRUN lies lane_in_group slots
          // after the group's first slot.
          const int own = scatter_group<NG>(lane);
          const int lane_in_group = lane & (width - 1);
          bool own_stored = false;
#pragma unroll
          for (int g = 0; g < NG; ++g) own_stored = g == own ? store[g * GRUN] : own_stored;
          if (own_stored && lane_in_group < NG) {
            const int first = c * (kRun * tpr) + own * (GRUN * kRunLanes) + lane_base - lane_in_group;
            store_group_scale(p, row, first >> group_shift, scale);
          }
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const float inv_scale = shfl_idx(inv_own, scatter_lane_bits<NG>(g), NG);
#pragma unroll
            for (int t = 0; t < GRUN; ++t) {
              const int i = g * GRUN + t;
              if (store[i]) {
                store_norm(slot_of(c * kRun + i), y[i]);
                store_pack<ALIGNED, STRM>(q_row, slot_of(c * kRun + i) * V, H, quantize<OUT>(y[i], inv_scale, round_q));
              }
            }
          }
        } else {
          float scale[kRun / GRUN];
          group_scales<GRUN, OUT, RULE>(y, has, group_slots / GRUN, rule, scale);
          float inv_scale[kRun / GRUN];
#pragma unroll
          for (int g = 0; g < kRun / GRUN; ++g) inv_scale[g] = reciprocal_of_scale<RULE>(scale[g]);
#pragma unroll
          for (int i = 0; i < kRun; ++i) {
            const int slot = slot_of(c * kRun + i);
            if (store[i]) {
              store_norm(slot, y[i]);
              if ((slot & (group_slots - 1)) == 0) store_group_scale(p, row, slot >> group_shift, scale[i / GRUN]);
              store_pack<ALIGNED, STRM>(q_row, slot * V, H, quantize<OUT>(y[i], inv_scale[i / GRUN], round_q));
            }
          }
        }
      };
      if constexpr (CACHED) {
        bool has[kRun], store[kRun];
#pragma unroll
        for (int i = 0; i < kRun; ++i) {
          const bool in_row = valid && slot_of(i) < nslots;
          has[i] = in_row && needs_y(i);
          store[i] = in_row && mine(i);
        }
        quant_chunk(rows_cache, has, store, 0);
      } else {
        for (int c = 0; c < loops / kRun; ++c) {
          TPack y[kRun];
          bool has[kRun];
#pragma unroll
          for (int i = 0; i < kRun; ++i) {
            const int slot = slot_of(c * kRun + i);
            has[i] = valid && slot < nslots;
            if (has[i]) y_slot_uncached(slot, y[i]);
          }
          quant_chunk(y, has, has, c);
        }
      }
      // The padded layouts' padding of this row (one block of a split row writes it).
      if (valid && part == 0 && (p.packed_ue8m0_scales || p.scale_padded_rows > p.rows))
        zero_group_scale_padding(p, row, lane, tpr);
    }
    // The reduction buffers are reused by the next row group.
    if (tpr > kWarpSize) __syncthreads();
  }
}

}  // namespace dev
}  // namespace fusion_kernels
