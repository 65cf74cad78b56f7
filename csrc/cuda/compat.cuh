// SPDX-License-Identifier: Apache-2.0
// The one place where CUDA and HIP differ: warp size, warp shuffles, packed 16-bit float math
// and FP8/INT8 conversions. The kernels are written once against these helpers; the HIP build is
// produced from the same sources by hipify, which translates runtime calls and types but leaves
// FP8 intrinsics and *_sync shuffles alone, so those are mapped here by hand.
#pragma once

#include <cstdint>

#if defined(USE_ROCM) || defined(__HIP_PLATFORM_AMD__)
#define FK_HIP 1
#include <hip/hip_bf16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_fp8.h>
#include <hip/hip_runtime.h>
#else
#define FK_HIP 0
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#endif

namespace fusion_kernels {
namespace dev {

// Warp (wavefront) width, fixed at compile time: 32 on NVIDIA, 64 on CDNA (gfx90a/gfx942/gfx950).
#if FK_HIP
#if defined(__AMDGCN_WAVEFRONT_SIZE)
constexpr int kWarpSize = __AMDGCN_WAVEFRONT_SIZE;
#else
constexpr int kWarpSize = 64;
#endif
#else
constexpr int kWarpSize = 32;
#endif

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
#if FK_HIP
#if defined(HIP_ENABLE_WARP_SYNC_BUILTINS)
  return __shfl_xor_sync(~0ull, v, lane_mask, kWarpSize);  // 64-bit lane mask on wave64
#else
  return __shfl_xor(v, lane_mask, kWarpSize);
#endif
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, kWarpSize);
#endif
}

// The same butterfly step on 32 raw bits (a packed pair of 16-bit floats).
__device__ __forceinline__ uint32_t shfl_xor_u32(uint32_t v, int lane_mask) {
#if FK_HIP
#if defined(HIP_ENABLE_WARP_SYNC_BUILTINS)
  return static_cast<uint32_t>(__shfl_xor_sync(~0ull, static_cast<int>(v), lane_mask, kWarpSize));
#else
  return static_cast<uint32_t>(__shfl_xor(static_cast<int>(v), lane_mask, kWarpSize));
#endif
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, kWarpSize);
#endif
}

// The value of lane `src` of this lane's aligned segment of `width` lanes (an index shuffle; a
// constant `src` and `width` need no lane arithmetic).
__device__ __forceinline__ float shfl_idx(float v, int src, int width) {
#if FK_HIP
#if defined(HIP_ENABLE_WARP_SYNC_BUILTINS)
  return __shfl_sync(~0ull, v, src, width);
#else
  return __shfl(v, src, width);
#endif
#else
  return __shfl_sync(0xffffffffu, v, src, width);
#endif
}

// Whether `pred` holds in any lane of the warp (a warp-uniform result).
__device__ __forceinline__ bool warp_any(bool pred) {
#if FK_HIP
#if defined(HIP_ENABLE_WARP_SYNC_BUILTINS)
  return __any_sync(~0ull, pred);
#else
  return __any(pred);
#endif
#else
  return __any_sync(0xffffffffu, pred);
#endif
}

// Lets the next kernel on the stream start launching while this one runs (programmatic
// dependent launch, sm_90+). `grid_dependency_wait` must come before the kernel's first global
// memory access: it returns once the grids this one depends on have finished and their writes
// are visible. Both are no-ops when the kernel was launched without the attribute, and compile
// to nothing for older architectures and on HIP.
__device__ __forceinline__ void grid_dependency_wait() {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependents_launch() {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#ifndef FK_ASYNC_COPY_L1  // the async copies through L1 (.ca; 0: L2 only, .cg)
#define FK_ASYNC_COPY_L1 1  // measured: the blocks of an SM share the norm weight in L1 (BENCHMARKS.md, item 29)
#endif
// A 16-byte copy from global to shared memory that holds no registers while in flight
// (`cp.async`, sm_80+), visible to the issuing thread after async_copy_wait_all. A
// plain copy on HIP.
__device__ __forceinline__ void async_copy16(void* smem, const void* gmem) {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
#if FK_ASYNC_COPY_L1
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#endif
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void async_copy_wait_all() {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// Loads of data read once and stores of data written once, with the cache-streaming hint
// (evict first from L1/L2). C is a 1-16 byte vector chunk type. Plain accesses on HIP.
template <typename C>
__device__ __forceinline__ C load_streaming(const C* p) {
#if FK_HIP
  return *p;
#else
  return __ldcs(p);
#endif
}
template <typename C>
__device__ __forceinline__ void store_streaming(C* p, const C& v) {
#if FK_HIP
  *p = v;
#else
  __stcs(p, v);
#endif
}

// max(a, b) that propagates NaN (fmaxf would drop it): one instruction on sm_80+.
__device__ __forceinline__ float max_nan(float a, float b) {
#if FK_HIP
  return (a != a || a > b) ? a : b;
#else
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#endif
}

// Max over the lanes named in `mask` of values that are >= +0 or NaN, in one warp instruction
// (redux, sm_80+): for such floats the unsigned order of the bits is the float order with NaN
// above +Inf, so this is the NaN-propagating max (a NaN's payload may differ; every use of the
// result rounds it to the canonical NaN).
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FK_HAS_REDUX 1
__device__ __forceinline__ float lanes_max_nonneg(float v, unsigned mask) {
  return __uint_as_float(__reduce_max_sync(mask, __float_as_uint(v)));
}
#else
#define FK_HAS_REDUX 0
#endif

// --- 16-bit floats ------------------------------------------------------------------------
#if FK_HIP
using bf16_t = __hip_bfloat16;
using bf162_t = __hip_bfloat162;
#else
using bf16_t = __nv_bfloat16;
using bf162_t = __nv_bfloat162;
#endif
using fp16_t = __half;
using fp162_t = __half2;

template <typename T>
struct Pair;  // the packed pair type of T
template <>
struct Pair<bf16_t> { using type = bf162_t; };
template <>
struct Pair<fp16_t> { using type = fp162_t; };

__device__ __forceinline__ float2 to_float2(bf162_t v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(fp162_t v) { return __half22float2(v); }

// Round-to-nearest-even packing of two floats.
template <typename P>
__device__ __forceinline__ P from_float2(float2 v);
template <>
__device__ __forceinline__ bf162_t from_float2<bf162_t>(float2 v) { return __float22bfloat162_rn(v); }
template <>
__device__ __forceinline__ fp162_t from_float2<fp162_t>(float2 v) { return __float22half2_rn(v); }

// a * b rounded once to the 16-bit type. The product of two 16-bit values is exact in fp32,
// so this equals rounding the fp32 product: the spec's "T(T(normed) * weight)".
__device__ __forceinline__ bf162_t mul_round(bf162_t a, bf162_t b) {
#if FK_HIP
  return __float22bfloat162_rn(make_float2(__low2float(a) * __low2float(b), __high2float(a) * __high2float(b)));
#else
  return __hmul2(a, b);
#endif
}
__device__ __forceinline__ fp162_t mul_round(fp162_t a, fp162_t b) { return __hmul2(a, b); }

// max(a, b) per lane of a packed pair of 16-bit floats, NaN-propagating.
template <typename P>
__device__ __forceinline__ P max_nan_pair(P a, P b) {
#if FK_HIP
  const float2 fa = to_float2(a), fb = to_float2(b);
  return from_float2<P>(make_float2(max_nan(fa.x, fb.x), max_nan(fa.y, fb.y)));
#else
  return __hmax2_nan(a, b);
#endif
}

// Bytes of two packed pairs of 16-bit floats rearranged by a __byte_perm selector: 0x5410 gives
// (a.lo, b.lo), 0x7632 (a.hi, b.hi).
template <unsigned SEL, typename P>
__device__ __forceinline__ P pair_perm(P a, P b) {
  uint32_t x, y;
  __builtin_memcpy(&x, &a, sizeof(x));
  __builtin_memcpy(&y, &b, sizeof(y));
  const uint32_t r = __byte_perm(x, y, SEL);
  P out;
  __builtin_memcpy(&out, &r, sizeof(r));
  return out;
}

// A butterfly step on a packed pair of 16-bit floats (one 32-bit shuffle).
template <typename P>
__device__ __forceinline__ P shfl_xor_pair(P v, int lane_mask) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  bits = shfl_xor_u32(bits, lane_mask);
  P other;
  __builtin_memcpy(&other, &bits, sizeof(bits));
  return other;
}

// max(|a|, acc) per lane, NaN-propagating (a NaN in the row makes the row's scale NaN).
__device__ __forceinline__ bf162_t abs_max_nan(bf162_t a, bf162_t acc) {
#if FK_HIP
  const float2 fa = __bfloat1622float2(a), fc = __bfloat1622float2(acc);
  auto m = [](float x, float c) { x = fabsf(x); return (x != x || x > c) ? x : c; };
  return __float22bfloat162_rn(make_float2(m(fa.x, fc.x), m(fa.y, fc.y)));
#else
  return __hmax2_nan(__habs2(a), acc);
#endif
}
__device__ __forceinline__ fp162_t abs_max_nan(fp162_t a, fp162_t acc) {
#if FK_HIP
  const float2 fa = __half22float2(a), fc = __half22float2(acc);
  auto m = [](float x, float c) { x = fabsf(x); return (x != x || x > c) ? x : c; };
  return __float22half2_rn(make_float2(m(fa.x, fc.x), m(fa.y, fc.y)));
#else
  return __hmax2_nan(__habs2(a), acc);
#endif
}

// 1 / s correctly rounded, for s in [2^-126, 2^126] or +Inf or NaN (a quantization scale):
// the hardware approximation and one Newton step, the fast path of rcp.rn without its range
// check and slow-path call (checked against rcp.rn for every such float).
__device__ __forceinline__ float rcp_scale(float s) {
#if FK_HIP
  return __frcp_rn(s);
#else
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
  const float e = __fmaf_rn(r, s, -1.0f);
  const float r1 = __fmaf_rn(-e, r, r);
  return s == INFINITY ? 0.0f : r1;
#endif
}

// --- 8-bit outputs ------------------------------------------------------------------------

// OCP float8_e4m3fn, round to nearest even, saturating: |v| beyond 448 (and +-Inf) -> +-448,
// NaN -> NaN. Two values packed as (lo, hi) bytes.
__device__ __forceinline__ uint16_t to_e4m3fn_x2(float2 v) {
#if FK_HIP
  return static_cast<uint16_t>(__hip_cvt_float2_to_fp8x2(v, __HIP_SATFINITE, __HIP_E4M3));
#else
  return static_cast<uint16_t>(__nv_cvt_float2_to_fp8x2(v, __NV_SATFINITE, __NV_E4M3));
#endif
}

__device__ __forceinline__ uint8_t to_e4m3fn(float v) {
#if FK_HIP
  return static_cast<uint8_t>(__hip_cvt_float_to_fp8(v, __HIP_SATFINITE, __HIP_E4M3));
#else
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
#endif
}

// float8_e4m3fnuz (bias 8, no infinities, no negative zero, NaN = 0x80), round to nearest even,
// saturating at +-240.
__device__ __forceinline__ uint8_t to_e4m3fnuz(float v) {
#if FK_HIP && defined(__gfx942__)
  // MI300 converts to fnuz natively (v_cvt_pk_fp8_f32).
  return static_cast<uint8_t>(__hip_cvt_float_to_fp8(v, __HIP_SATFINITE, __HIP_E4M3_FNUZ));
#else
  // Every fnuz encoding is the e4m3fn encoding of twice its value (same mantissa, exponent bias
  // one higher), so round 2v on the e4m3fn grid. Three cases differ: NaN (0x80 in fnuz), the top
  // binade where fnuz has 240 but e4m3fn stops at 448 = 2 * 224, and negative zero (none in fnuz).
  if (v != v) return 0x80;
  if (fabsf(v) > 232.0f) return v < 0.0f ? 0xff : 0x7f;  // rounds to +-240; 232 ties to 224 (even)
  const uint8_t bits = to_e4m3fn(2.0f * v);
  return (bits == 0x80) ? uint8_t(0) : bits;
#endif
}

__device__ __forceinline__ uint16_t to_e4m3fnuz_x2(float2 v) {
#if FK_HIP && defined(__gfx942__)
  return static_cast<uint16_t>(__hip_cvt_float2_to_fp8x2(v, __HIP_SATFINITE, __HIP_E4M3_FNUZ));
#else
  return static_cast<uint16_t>(to_e4m3fnuz(v.x) | (uint16_t(to_e4m3fnuz(v.y)) << 8));
#endif
}

// Round to nearest even and saturate to [-128, 127]; NaN -> 0. The result is in the low byte.
__device__ __forceinline__ uint32_t to_int8(float v) {
#if FK_HIP
  const float c = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
  return (c != c) ? 0u : static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(__float2int_rn(c))));
#else
  uint32_t r;  // a register wider than the instruction type is allowed for cvt
  asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
#endif
}

// Byte packing with one byte permute per step (building the word through 8- or 16-bit stores
// lets the compiler emit masks and shifts per byte).
__device__ __forceinline__ uint32_t pack_low_halves(uint32_t lo, uint32_t hi) { return __byte_perm(lo, hi, 0x5410); }
__device__ __forceinline__ uint32_t pack_low_bytes(uint32_t b0, uint32_t b1, uint32_t b2, uint32_t b3) {
  return pack_low_halves(__byte_perm(b0, b1, 0x0040), __byte_perm(b2, b3, 0x0040));
}

// Four values converted and packed into one word (byte k = value k).
__device__ __forceinline__ uint32_t to_e4m3fn_x4(float a, float b, float c, float d) {
#if !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // Two packed conversions joined in registers (the intrinsic's 16-bit result gets masked first).
  uint32_t r;
  asm("{ .reg .b16 lo, hi;\n"
      "  cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n"
      "  cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      "  mov.b32 %0, {lo, hi}; }"
      : "=r"(r)
      : "f"(a), "f"(b), "f"(c), "f"(d));
  return r;
#else
  return pack_low_halves(to_e4m3fn_x2(make_float2(a, b)), to_e4m3fn_x2(make_float2(c, d)));
#endif
}
__device__ __forceinline__ uint32_t to_e4m3fnuz_x4(float a, float b, float c, float d) {
  return pack_low_halves(to_e4m3fnuz_x2(make_float2(a, b)), to_e4m3fnuz_x2(make_float2(c, d)));
}
#ifndef FK_INT8_PACK  // 0: four single conversions joined by byte permutes (BENCHMARKS.md, item 34)
#define FK_INT8_PACK 1
#endif
__device__ __forceinline__ uint32_t to_int8_x4(float a, float b, float c, float d) {
#if FK_INT8_PACK && !FK_HIP && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 720
  // Round to nearest even into int32 (saturating; NaN -> 0), then two saturating packs of a pair
  // into bytes (the second shifts the first's pair into the high half): the same values as
  // to_int8 on each, and ptxas joins each conversion pair and its pack into one F2IP.S8.F32
  // instruction (two values per instruction, as the FP8 conversions).
  int ia, ib, ic, id;
  asm("cvt.rni.s32.f32 %0, %1;" : "=r"(ia) : "f"(a));
  asm("cvt.rni.s32.f32 %0, %1;" : "=r"(ib) : "f"(b));
  asm("cvt.rni.s32.f32 %0, %1;" : "=r"(ic) : "f"(c));
  asm("cvt.rni.s32.f32 %0, %1;" : "=r"(id) : "f"(d));
  uint32_t hi, r;
  asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;" : "=r"(hi) : "r"(id), "r"(ic));
  asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(ib), "r"(ia), "r"(hi));
  return r;
#else
  return pack_low_bytes(to_int8(a), to_int8(b), to_int8(c), to_int8(d));
#endif
}

}  // namespace dev
}  // namespace fusion_kernels
