// SPDX-License-Identifier: Apache-2.0
// Device code of the row op ([residual add] -> [RMSNorm] -> [quantize]). Raw pointers only.
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
//
// Rounding points (the spec, fusion_kernels/reference.py):
//   r = T(x + residual); y = T(T(r * rsqrt(mean(r^2) + eps)) * w); q = quant(y * (1 / scale)).
// The kernels are compute-bound at HBM speed unless the per-element work is small, so 16-bit
// inputs use packed pair instructions (one rounding each, exactly the spec's), the scale is
// applied as a multiply by its correctly rounded reciprocal, and the 8-bit conversions saturate
// in hardware.
#pragma once

#include <type_traits>

#include "cuda/compat.cuh"
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
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_e4m3fn_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kE4m3fnuz> {
  static constexpr float kMax = kFp8E4m3fnuzMax;
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_e4m3fnuz_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kInt8> {
  static constexpr float kMax = kInt8Max;
  __device__ static uint32_t convert4(float a, float b, float c, float d) { return to_int8_x4(a, b, c, d); }
};
template <>
struct QuantTraits<OutKind::kPlain> {
  static constexpr float kMax = 0.0f;
  __device__ static uint32_t convert4(float, float, float, float) { return 0; }
};

// --- per-slot arithmetic ------------------------------------------------------------------
// A slot is Pack<T, V>. 16-bit types are processed as V/2 packed pairs; fp32 element-wise
// (rounding to fp32 is the identity). W is the weight's element type (T or float).

template <typename T>
constexpr bool kIs16 = !std::is_same_v<T, float>;

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

template <typename T, int V>
__device__ __forceinline__ void accumulate_squares(const Pack<T, V>& r, float& acc0, float& acc1) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* r2 = reinterpret_cast<const P*>(r.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 f = to_float2(r2[p]);
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
template <typename T, typename W, int V>
__device__ __forceinline__ void normalize(Pack<T, V>& y, float inv, const Pack<W, V>& w) {
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    P* y2 = reinterpret_cast<P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 f = to_float2(y2[p]);
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

template <OutKind OUT, typename T, int V>
__device__ __forceinline__ Pack<uint8_t, V> quantize(const Pack<T, V>& y, float inv_scale) {
  static_assert(V % 4 == 0, "a slot quantizes into whole 32-bit words");
  float f[V];
  if constexpr (kIs16<T>) {
    using P = typename Pair<T>::type;
    const P* y2 = reinterpret_cast<const P*>(y.v);
#pragma unroll
    for (int p = 0; p < V / 2; ++p) {
      const float2 g = to_float2(y2[p]);
      f[2 * p] = g.x * inv_scale;
      f[2 * p + 1] = g.y * inv_scale;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = y.v[k] * inv_scale;
  }
  Pack<uint8_t, V> q;
  uint32_t* q4 = reinterpret_cast<uint32_t*>(q.v);
#pragma unroll
  for (int k = 0; k < V / 4; ++k) q4[k] = QuantTraits<OUT>::convert4(f[4 * k], f[4 * k + 1], f[4 * k + 2], f[4 * k + 3]);
  return q;
}

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

// --- the kernel ---------------------------------------------------------------------------

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

// a / qmax, correctly rounded, for the scales (a >= kGroupAbsmaxFloor, +Inf or NaN): the
// product with the rounded reciprocal is within an ulp of the quotient, and one fma correction
// step (Markstein) rounds it correctly; checked against div.rn for every such float.
template <OutKind OUT>
__device__ __forceinline__ float div_by_qmax(float a) {
#if FK_FAST_SCALE_DIV
  constexpr float c = QuantTraits<OUT>::kMax;
  constexpr float y = 1.0f / c;
  const float q = __fmul_rn(a, y);
  const float r = fmaf(-q, c, a);
  const float q1 = fmaf(r, y, q);
  return a == INFINITY ? a : q1;
#else
  return __fdiv_rn(a, QuantTraits<OUT>::kMax);
#endif
}

// The group quant's scales of one chunk of a thread's slots y[0..R-1] (has[i]: slot i holds a y
// of the row; the others count as 0), whose aligned runs of M slots belong to one group each, the
// group's other runs on the aligned `width` lanes around this one: an in-thread absmax over the
// run, then one butterfly for all runs, and one scale per run.
template <int M, OutKind OUT, typename T, int V, int R>
__device__ __forceinline__ void group_scales(const Pack<T, V> (&y)[R], const bool (&has)[R], int width, bool ue8m0,
                                             float (&scale)[R / M]) {
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
  for (int g = 0; g < R / M; ++g) {
    const float a = amax[g] < kGroupAbsmaxFloor ? kGroupAbsmaxFloor : amax[g];
    scale[g] = div_by_qmax<OUT>(a);
    if (ue8m0) scale[g] = ue8m0_ceil(scale[g]);
  }
}

// The group quant's run length for a group of `group_slots` slots: a thread's slots of a chunk
// fall into runs of this many consecutive slots in one group each. A kernel template parameter
// (GRUN): the group code unrolled for a run length chosen at run time costs registers (spills).
constexpr int kMinGroupSize = 32;  // group sizes: 32, 64 or 128 (checked by the op)
__host__ __device__ constexpr int group_run_of(int group_slots) {
  return group_slots / kRunLanes >= kRun ? kRun : (group_slots / kRunLanes >= 1 ? group_slots / kRunLanes : 1);
}

// Two variants of the register-cached normalizing kernel, identical in arithmetic (so in
// results): the latency variant (WREGS) loads the norm weight into registers together with the
// row, which saves a dependent round trip when there are few rows; the throughput variant runs
// under a register budget per variant (min_blocks), so more blocks, and more rows' loads, are in
// flight per SM, and gets the weight without registers: copied into shared memory as the block
// starts (WSMEM), or else read after the reduction (from L1/L2). The launcher picks by the size
// of the grid.
template <typename T, typename W, OutKind OUT, QuantMode Q, int GRUN, bool NORM, bool RES, bool ALIGNED, bool CACHED,
          bool WREGS = false, bool WSMEM = false, bool WIDE = false>
__global__ void __launch_bounds__((max_threads<WIDE>()), (min_blocks<Q, RES, WREGS, WIDE>()))
    row_op_kernel(const RowOpParams p, const int split_arg) {
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
  // i * split / S == part. Less of the per-element work and of the writes per SM.
  const int split = WREGS ? split_arg : 1;
  const int part = WREGS ? static_cast<int>(blockIdx.x % split) : 0;
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
  const int64_t first_rg = WREGS ? blockIdx.x / split : blockIdx.x;
  const int64_t rg_stride = WREGS ? gridDim.x / split : gridDim.x;
  // In-row offsets are 32-bit (the host checks H <= kMaxHidden): fewer registers per slot.
  const int H = static_cast<int>(p.hidden);
  const int nslots = (H + V - 1) / V;
  // Thread `lane`'s j-th slot of the row (the mapping in the header comment): runs of kRunLanes
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
  constexpr float qmax = QuantTraits<OUT>::kMax;

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
            if (slot < nslots) {
              constexpr int kChunks = sizeof(WPack) / 16;
#pragma unroll
              for (int c = 0; c < kChunks; ++c)
                async_copy16(reinterpret_cast<uint4*>(&w_smem[i * tpr]) + c, w_base + slot * V + c * (V / kChunks));
            }
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
        const float ub = p.scale_ub != nullptr ? *p.scale_ub : 0.0f;
        const float a = (p.scale_ub != nullptr && amax > ub) ? ub : amax;
        constexpr float min_scale = 1.0f / (qmax * kPerTokenMinScaleFactor);  // qmax * 512 is exact
        // a / qmax is exact-rounded by div_by_qmax for a >= 1e-10; below that the quotient is far
        // under min_scale either way. The scale is then within rcp_scale's range (or Inf / NaN).
        float scale = div_by_qmax<OUT>(a);
        scale = scale < min_scale ? min_scale : scale;
        if (valid && lane == 0 && part == 0) p.scales[row * p.scale_row_stride] = scale;
        inv_scale = rcp_scale(scale);
      }
#pragma unroll
      for (int i = 0; i < (CACHED ? S : 1); ++i)
        for (int j = CACHED ? i : 0; j < (CACHED ? i + 1 : loops); ++j) {
          const int slot = slot_of(j);
          if (valid && slot < nslots && mine(i)) {
            TPack y;
            get_y(i, slot, y);
            store_pack<ALIGNED, STRM>(static_cast<uint8_t*>(p.out) + row * H, slot * V, H, quantize<OUT>(y, inv_scale));
          }
        }
    } else {  // kPerGroup
      // A chunk of kRun slots per thread at a time: the whole row when it is in registers,
      // else one chunk after the other, recomputed from memory.
      float* const row_scales = p.scales + row * p.scale_row_stride;
      uint8_t* const q_row = static_cast<uint8_t*>(p.out) + row * H;
      auto quant_chunk = [&](const TPack (&y)[kRun], const bool (&has)[kRun], const bool (&store)[kRun], int c) {
        constexpr int NG = kRun / GRUN;  // groups per thread per chunk
        // (A group spans at least kMinGroupSize / 8 >= NG lanes, as the scatter needs.)
        if constexpr (kIs16<T> && FK_GROUP_SCATTER && NG >= 2 && NG >= FK_GROUP_SCATTER && NG <= kMinGroupSize / 8) {
          // Each lane computes the scale of one group (group_absmax_scatter) and reads the
          // reciprocal for each of its slots from a lane that holds the slot's group.
          const int width = group_slots / GRUN;
          AbsMax<T> am[NG];
#pragma unroll
          for (int g = 0; g < NG; ++g) {
#pragma unroll
            for (int t = 0; t < GRUN; ++t)
              if (has[g * GRUN + t]) am[g].add(y[g * GRUN + t]);
          }
          const float a = group_absmax_scatter<T, NG>(am, width, lane);
          float scale = div_by_qmax<OUT>(a < kGroupAbsmaxFloor ? kGroupAbsmaxFloor : a);
          if (p.scale_ue8m0) scale = ue8m0_ceil(scale);
          const float inv_own = rcp_scale(scale);
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
            row_scales[(first >> group_shift) * p.scale_group_stride] = scale;
          }
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const float inv_scale = shfl_idx(inv_own, scatter_lane_bits<NG>(g), NG);
#pragma unroll
            for (int t = 0; t < GRUN; ++t) {
              const int i = g * GRUN + t;
              if (store[i]) store_pack<ALIGNED, STRM>(q_row, slot_of(c * kRun + i) * V, H, quantize<OUT>(y[i], inv_scale));
            }
          }
        } else {
          float scale[kRun / GRUN];
          group_scales<GRUN, OUT>(y, has, group_slots / GRUN, p.scale_ue8m0, scale);
          float inv_scale[kRun / GRUN];
#pragma unroll
          for (int g = 0; g < kRun / GRUN; ++g) inv_scale[g] = rcp_scale(scale[g]);
#pragma unroll
          for (int i = 0; i < kRun; ++i) {
            const int slot = slot_of(c * kRun + i);
            if (store[i]) {
              if ((slot & (group_slots - 1)) == 0) row_scales[(slot >> group_shift) * p.scale_group_stride] = scale[i / GRUN];
              store_pack<ALIGNED, STRM>(q_row, slot * V, H, quantize<OUT>(y[i], inv_scale[i / GRUN]));
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
    }
    // The reduction buffers are reused by the next row group.
    if (tpr > kWarpSize) __syncthreads();
  }
}

}  // namespace dev
}  // namespace fusion_kernels
