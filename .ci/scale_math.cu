// SPDX-License-Identifier: Apache-2.0
// Exhaustive check of the kernels' scale arithmetic against IEEE division and reciprocal, on the
// GPU, over every positive float: dev::div_by_qmax<OUT>(a) == div.rn(a, qmax) for a >= 1e-10 (the
// group floor; per-token scales below it are clamped far above), and dev::rcp_scale(s) ==
// rcp.rn(s) on [2^-126, 2^126] and at +Inf;
// dev::to_int8_x4 packs cvt.rni.sat.s8.f32 of each value, for every float. Built and run by .ci/gpu:
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc .ci/scale_math.cu -o scale_math && ./scale_math
#include <cstdio>

#include "cuda/row_op_kernels.cuh"

using namespace fusion_kernels;
using namespace fusion_kernels::dev;

template <OutKind OUT>
__global__ void check_div(unsigned long long* bad, unsigned int* first) {
  const float floor = kGroupAbsmaxFloor;
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0x7f800000ull;
       i += 1ull * gridDim.x * blockDim.x) {
    const float a = __uint_as_float(static_cast<unsigned>(i));
    if (a < floor) continue;
    if (__float_as_uint(div_by_qmax<OUT>(a)) != __float_as_uint(__fdiv_rn(a, QuantTraits<OUT>::kMax))) {
      atomicAdd(bad, 1ull);
      atomicMin(first, static_cast<unsigned>(i));
    }
  }
}

__global__ void check_rcp(unsigned long long* bad, unsigned int* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0x7f800000ull;
       i += 1ull * gridDim.x * blockDim.x) {
    const float s = __uint_as_float(static_cast<unsigned>(i));
    const bool in_range = (s >= 0x1p-126f && s <= 0x1p126f) || s == INFINITY;
    if (in_range && __float_as_uint(rcp_scale(s)) != __float_as_uint(__frcp_rn(s))) {
      atomicAdd(bad, 1ull);
      atomicMin(first, static_cast<unsigned>(i));
    }
  }
}

// to_int8_x4 (the kernels' INT8 rounding and packing) against the conversion instruction on each
// value: every float bit pattern (NaNs and infinities included) in the first position, its
// negation, its bits scrambled and a neighbouring pattern in the others.
__device__ __forceinline__ uint32_t cvt_s8(float v) {
  uint32_t r;
  asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r & 0xffu;
}

__global__ void check_int8(unsigned long long* bad, unsigned int* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0xffffffffull;
       i += 1ull * gridDim.x * blockDim.x) {
    const unsigned u = static_cast<unsigned>(i);
    const float v[4] = {__uint_as_float(u), __uint_as_float(u ^ 0x80000000u), __uint_as_float(u * 2654435761u),
                        __uint_as_float(u + 0x00400001u)};
    const uint32_t got = to_int8_x4(v[0], v[1], v[2], v[3]);
    const uint32_t want = cvt_s8(v[0]) | cvt_s8(v[1]) << 8 | cvt_s8(v[2]) << 16 | cvt_s8(v[3]) << 24;
    if (got != want) {
      atomicAdd(bad, 1ull);
      atomicMin(first, u);
    }
  }
}

template <typename Launch>
static unsigned long long run(const char* what, Launch launch) {
  unsigned long long* bad;
  unsigned int* first;
  cudaMallocManaged(&bad, sizeof(*bad));
  cudaMallocManaged(&first, sizeof(*first));
  *bad = 0;
  *first = 0xffffffffu;
  launch(bad, first);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("%s: CUDA error %s\n", what, cudaGetErrorString(err));
    return 1;
  }
  const unsigned long long n = *bad;
  std::printf("%s: %llu mismatches%s", what, n, n ? "" : "\n");
  if (n) std::printf(" (first at bits 0x%08x)\n", *first);
  cudaFree(bad);
  cudaFree(first);
  return n;
}

int main() {
  const dim3 grid(132 * 16), block(256);
  unsigned long long bad = 0;
  bad += run("div_by_qmax e4m3fn (448)", [&](auto b, auto f) { check_div<OutKind::kE4m3fn><<<grid, block>>>(b, f); });
  bad += run("div_by_qmax e4m3fnuz (240)", [&](auto b, auto f) { check_div<OutKind::kE4m3fnuz><<<grid, block>>>(b, f); });
  bad += run("div_by_qmax int8 (127)", [&](auto b, auto f) { check_div<OutKind::kInt8><<<grid, block>>>(b, f); });
  bad += run("to_int8_x4", [&](auto b, auto f) { check_int8<<<grid, block>>>(b, f); });
  bad += run("rcp_scale", [&](auto b, auto f) { check_rcp<<<grid, block>>>(b, f); });
  std::printf("scale math: %s\n", bad ? "FAILED" : "exact");
  return bad ? 1 : 0;
}
