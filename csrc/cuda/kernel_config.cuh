// SPDX-License-Identifier: Apache-2.0
// Compile-time configuration of the row-op kernels (row_op_kernels.cuh), shared with their
// launcher (launch.cuh): the tuning knobs, the thread mapping and its constants, the register
// budget of each instantiation and whether the norm weight is staged in shared memory.
//
// Thread mapping (fixed by the hidden size H alone, never by the number of rows, so a row's
// result is bit-identical whatever the batch it is computed in, and the unfused ops, which run
// this same kernel with stages off, agree bit for bit with the fused ones):
//   - a row is cut into 16-byte "slots" of V = 16 / sizeof(T) elements;
//   - `tpr` threads (blockDim.x, a power of two >= the warp size) own a row, in chunks of
//     R * tpr slots (R = kRun = kCachedSlots, 4): in a chunk, each run of L consecutive lanes
//     (L = kRunLanes, 8) owns L * R consecutive slots, lane k of the run the slots k, k + L,
//     k + 2 L, ... of them. So one load instruction of a run reads a whole 128-byte line, and
//     a group of the group quant (64 or 128 elements of a 16-bit type: 8 or 16 slots) lies in
//     the 8 lanes of a run, 1 or 2 slots of each: its absmax is an in-thread max over them and
//     a butterfly over 3 levels that also scatters a thread's groups over the lanes, so a lane
//     computes one scale and reads the others' by shuffle (BENCHMARKS.md, items 35-37);
//     blockDim.y rows share a block when H is small;
//   - the block loops over row groups (grid-stride); the latency variant (WREGS, few rows)
//     keeps the norm weight in registers and may split a row over several blocks (each reduces
//     the whole row, then stores a share of it), the throughput variant stages the weight in
//     shared memory as the block starts (WSMEM) or reads it after the reduction.
// How many rows share a block, and which variant runs, may depend on the number of rows: the
// per-row arithmetic and reduction order are the same in all of them.
// The row is read from memory once and kept in registers (CACHED) when it fits in
// kCachedSlots slots per thread; otherwise each pass re-reads it (L2-resident) in the same order.
#pragma once

#include "cuda/compat.cuh"
#include "cuda/memory.cuh"
#include "row_op.h"

namespace fusion_kernels {
namespace dev {

// Tuning knobs (benchmarks/tune_kernels.py builds variants with -D overrides; BENCHMARKS.md
// records what was measured). Defaults are the measured best.
#ifndef FK_CACHED_SLOTS
#define FK_CACHED_SLOTS 4
#endif
#ifndef FK_PIPELINE
#define FK_PIPELINE 0
#endif
#ifndef FK_STREAMING  // throughput variant: cache-streaming hints on the row's loads and the stores
#define FK_STREAMING 0  // measured mixed (BENCHMARKS.md, item 11): off
#endif
#ifndef FK_WEIGHT_LOADS  // throughput variant's norm weight: 0 per slot as used, 1 all slots at once after
#define FK_WEIGHT_LOADS 0  // the row's reduction, 2 all at once before the block reduction
#endif
#ifndef FK_MIN_BLOCKS  // throughput variant: __launch_bounds__ minimum blocks of kMaxThreads per SM
#define FK_MIN_BLOCKS 2  // (2: 64 registers), for a residual or the static quant
#endif
#ifndef FK_MIN_BLOCKS_DYN  // the same for a dynamic quant (per-token, group) without a residual
#define FK_MIN_BLOCKS_DYN 3  // (3: 40 registers)
#endif
#ifndef FK_MIN_BLOCKS_STATIC  // the same for the static quant and the plain norm without a residual
#define FK_MIN_BLOCKS_STATIC FK_MIN_BLOCKS
#endif
#ifndef FK_WEIGHT_SMEM  // throughput variant: the norm weight copied into shared memory by cp.async
#define FK_WEIGHT_SMEM 1  // as the block starts (no registers held while in flight)
#endif
#ifndef FK_WEIGHT_LOADS_STATIC  // FK_WEIGHT_LOADS for the static quant and the plain norm
#define FK_WEIGHT_LOADS_STATIC 1
#endif
#ifndef FK_ROWS_BLOCK_THREADS  // block size when several rows share a block
#define FK_ROWS_BLOCK_THREADS 128
#endif
#ifndef FK_WEIGHT_AFTER_ROW  // latency variant: the norm weight requested before the row (0), after it (1),
#define FK_WEIGHT_AFTER_ROW 1  // or after it only when the row is split over blocks (2)
#endif
#ifndef FK_REDUX  // a warp's absmax (the per-token row reduction) by one redux instruction on sm_80+
#define FK_REDUX 1
#endif
#ifndef FK_FAST_SCALE_DIV  // dynamic scales: amax / qmax by a multiply and one fma correction
#define FK_FAST_SCALE_DIV 1
#endif
#ifndef FK_GROUP_SCATTER  // group quant with at least this many groups per thread (0: never): the absmax
#define FK_GROUP_SCATTER 2  // reduce-scattered, one scale per lane, the others read by shuffle (item 37)
#endif
constexpr int kMaxThreads = 512;  // per block; also the largest threads-per-row
constexpr int kCachedSlots = FK_CACHED_SLOTS;  // 16-byte slots per thread kept in registers
constexpr int kRowsBlockThreads = FK_ROWS_BLOCK_THREADS;
// Lanes per run of the thread mapping (see the header comment), and slots per thread per chunk.
#ifndef FK_RUN_LANES  // lanes per run (8: each load instruction of a run reads a whole 128-byte
#define FK_RUN_LANES 8  // line; 4: 64 contiguous bytes; BENCHMARKS.md, items 36-37)
#endif
constexpr int kRun = kCachedSlots;
constexpr int kRunLanes = FK_RUN_LANES;
static_assert(kRun >= 1 && (kRun & (kRun - 1)) == 0 && kRun <= 8, "FK_CACHED_SLOTS: a power of two, at most 8");
static_assert(kRunLanes >= 1 && (kRunLanes & (kRunLanes - 1)) == 0 && kRunLanes <= 32, "FK_RUN_LANES: a power of two <= 32");

#ifndef FK_WIDE_MIN_BLOCKS  // the WIDE instantiation: minimum resident blocks of kRowsBlockThreads
#define FK_WIDE_MIN_BLOCKS 9  // (9 of 128 threads: 56 registers; BENCHMARKS.md, item 35)
#endif
// Threads per block at most: the WIDE instantiation runs rows of <= 128 threads, kRowsBlockThreads
// per block (launch.cuh), so its register budget is given in blocks of that size.
template <bool WIDE>
constexpr int max_threads() {
  return WIDE ? kRowsBlockThreads : kMaxThreads;
}

// Register budget of each variant, as the minimum number of resident blocks of kMaxThreads
// threads per SM in __launch_bounds__ (measured, BENCHMARKS.md): a residual row, and the static
// quant with its weight loads batched, need 64 registers; per-token and group without a residual
// fit in 40 with more blocks in flight. WIDE: the same kernel under 56 registers (FK_WIDE_MIN_BLOCKS), which the
// launcher picks for those two on short rows at a few waves (FK_WIDE_ROWS_PER_SM, launch.cuh).
template <QuantMode Q, bool RES, bool WREGS, bool WIDE>
constexpr int min_blocks() {
  if (WREGS) return 1;
  if (WIDE) return FK_WIDE_MIN_BLOCKS;
  if (RES) return FK_MIN_BLOCKS;
  if (Q == QuantMode::kStatic || Q == QuantMode::kNone) return FK_MIN_BLOCKS_STATIC;
  return FK_MIN_BLOCKS_DYN;
}

// The throughput variant of the aligned register-cached norm kernel stages the norm weight in
// shared memory: each thread copies its own slots of the weight (cp.async) right after issuing
// the row's loads and reads them back after the reduction, so the weight costs neither
// registers nor a round trip to L2 after the reduction. Dynamic shared memory, per block.
template <bool NORM, bool ALIGNED, bool CACHED, bool WREGS>
__host__ __device__ constexpr bool weight_in_smem() {
  return FK_WEIGHT_SMEM && !FK_HIP && NORM && ALIGNED && CACHED && !WREGS;
}
template <typename T, typename W>
constexpr int weight_smem_bytes_per_thread() {
  return kCachedSlots * static_cast<int>(sizeof(Pack<W, 16 / sizeof(T)>));
}

}  // namespace dev
}  // namespace fusion_kernels
