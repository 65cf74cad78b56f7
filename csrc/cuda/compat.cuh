// SPDX-License-Identifier: Apache-2.0
// The one place where CUDA and HIP differ: warp size, warp shuffles, 16-bit float and FP8
// conversions. The kernels are written once against these helpers; the HIP build is produced
// from the same sources by hipify, which translates runtime calls and types but leaves FP8
// intrinsics and *_sync shuffles alone, so those are mapped here by hand.
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
using lane_mask_t = unsigned long long;  // HIP's *_sync shuffles take 64-bit lane masks
constexpr lane_mask_t kFullMask = ~0ull;
#else
constexpr int kWarpSize = 32;
using lane_mask_t = unsigned;
constexpr lane_mask_t kFullMask = 0xffffffffu;
#endif

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
#if FK_HIP
  return __shfl_xor(v, lane_mask, kWarpSize);
#else
  return __shfl_xor_sync(kFullMask, v, lane_mask, kWarpSize);
#endif
}

// --- 16-bit floats ------------------------------------------------------------------------
#if FK_HIP
using bf16_t = __hip_bfloat16;
#else
using bf16_t = __nv_bfloat16;
#endif
using fp16_t = __half;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<fp16_t>(fp16_t v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<bf16_t>(bf16_t v) { return __bfloat162float(v); }

// Round-to-nearest-even conversion from fp32.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ fp16_t from_float<fp16_t>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ bf16_t from_float<bf16_t>(float v) { return __float2bfloat16_rn(v); }

// --- 8-bit outputs ------------------------------------------------------------------------
// Each takes a value already clamped to the format's range (NaN passes through the clamp).

// OCP float8_e4m3fn, round to nearest even. NaN -> 0x7f/0xff.
__device__ __forceinline__ uint8_t to_e4m3fn(float v) {
#if FK_HIP
  return static_cast<uint8_t>(__hip_cvt_float_to_fp8(v, __HIP_SATFINITE, __HIP_E4M3));
#else
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
#endif
}

// float8_e4m3fnuz (bias 8, no infinities, no negative zero, NaN = 0x80), round to nearest even.
__device__ __forceinline__ uint8_t to_e4m3fnuz(float v) {
#if FK_HIP && defined(__gfx942__)
  // The MI300 conversion instruction (v_cvt_pk_fp8_f32) speaks fnuz natively.
  return static_cast<uint8_t>(__hip_cvt_float_to_fp8(v, __HIP_SATFINITE, __HIP_E4M3_FNUZ));
#else
  // Every fnuz encoding is the e4m3fn encoding of twice its value (same mantissa, exponent bias
  // one higher), so round 2v on the e4m3fn grid. Three cases differ: NaN (0x80 in fnuz), the top
  // binade where fnuz has 240 but e4m3fn stops at 448 = 2*224, and negative zero (none in fnuz).
  if (v != v) return 0x80;
  const float a = fabsf(v);
  if (a > 232.0f) return v < 0.0f ? 0xff : 0x7f;  // rounds to 240; 232 itself ties to 224 (even)
  const uint8_t bits = to_e4m3fn(2.0f * v);
  return (bits == 0x80) ? uint8_t(0) : bits;
#endif
}

__device__ __forceinline__ int8_t to_int8(float v) {
  // v is clamped to [-128, 127]; NaN is defined to quantize to 0.
  return (v != v) ? int8_t(0) : static_cast<int8_t>(__float2int_rn(v));
}

}  // namespace dev
}  // namespace fusion_kernels
