// SPDX-License-Identifier: Apache-2.0
// Exhaustive check of the kernels' scale arithmetic against IEEE division and reciprocal, on the
// GPU, over every positive float: dev::div_by_qmax<OUT>(a) == div.rn(a, qmax) for a >= 1e-10 (the
// group floor; per-token scales below it are clamped far above), and dev::rcp_scale(s) ==
// rcp.rn(s) on [2^-126, 2^126] and at +Inf;
// dev::to_int8_x4 packs cvt.rni.sat.s8.f32 of each value, for every float;
// the rule ops' scale arithmetic over its whole domain (every float >= 0, Inf and NaN): the
// division dev::RuleScaleArith<OUT>::div(a, rule) (the fast path by qmax, or div_rn) == div.rn
// for the formats' maxima and other divisors, dev::scale_reciprocal(s) == rcp.rn(s), and
// ue8m0_ceil(s) == the power of two at or above s by frexpf/ldexpf (subnormals included).
// Built and run by .ci/gpu:
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

// Same bits, or both NaN.
__device__ __forceinline__ bool same_float(float x, float y) {
  return __float_as_uint(x) == __float_as_uint(y) || (x != x && y != y);
}

template <OutKind OUT>
__global__ void check_rule_div(ScaleRule rule, unsigned long long* bad, unsigned int* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0x7fffffffull;
       i += 1ull * gridDim.x * blockDim.x) {
    const float a = __uint_as_float(static_cast<unsigned>(i));
    if (!same_float(RuleScaleArith<OUT>::div(a, rule), __fdiv_rn(a, rule.divisor))) {
      atomicAdd(bad, 1ull);
      atomicMin(first, static_cast<unsigned>(i));
    }
  }
}

static ScaleRule rule_dividing_by(float d) {
  ScaleRule r;
  r.set_divisor(d);
  return r;
}

__global__ void check_scale_reciprocal(unsigned long long* bad, unsigned int* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0x7fffffffull;
       i += 1ull * gridDim.x * blockDim.x) {
    const float s = __uint_as_float(static_cast<unsigned>(i));
    if (!same_float(scale_reciprocal(s), __frcp_rn(s))) {
      atomicAdd(bad, 1ull);
      atomicMin(first, static_cast<unsigned>(i));
    }
  }
}

__global__ void check_ue8m0(unsigned long long* bad, unsigned int* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i <= 0x7fffffffull;
       i += 1ull * gridDim.x * blockDim.x) {
    const float s = __uint_as_float(static_cast<unsigned>(i));
    float want = s;
    if (s > 0.0f && s != INFINITY) {
      int e;
      const float m = frexpf(s, &e);
      want = m == 0.5f ? s : ldexpf(1.0f, e);
    }
    if (!same_float(ue8m0_ceil(s), want)) {
      atomicAdd(bad, 1ull);
      atomicMin(first, static_cast<unsigned>(i));
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
  // The rule ops' division: by each format's maximum (fast path where exact, else div_rn) and by
  // other divisors (div_rn): 127.5, 3 and 6 (quotients exactly halfway between subnormals).
  const struct { const char* what; float divisor; int out; } divisions[] = {
      {"rule division by 448 (e4m3fn)", 448.0f, 0}, {"rule division by 240 (e4m3fnuz)", 240.0f, 1},
      {"rule division by 127 (int8)", 127.0f, 2},   {"rule division by 127.5", 127.5f, 2},
      {"rule division by 3", 3.0f, 0},              {"rule division by 6", 6.0f, 1}};
  for (const auto& d : divisions) {
    const ScaleRule rule = rule_dividing_by(d.divisor);
    bad += run(d.what, [&](auto b, auto f) {
      if (d.out == 0) check_rule_div<OutKind::kE4m3fn><<<grid, block>>>(rule, b, f);
      if (d.out == 1) check_rule_div<OutKind::kE4m3fnuz><<<grid, block>>>(rule, b, f);
      if (d.out == 2) check_rule_div<OutKind::kInt8><<<grid, block>>>(rule, b, f);
    });
  }
  bad += run("scale_reciprocal", [&](auto b, auto f) { check_scale_reciprocal<<<grid, block>>>(b, f); });
  bad += run("ue8m0_ceil", [&](auto b, auto f) { check_ue8m0<<<grid, block>>>(b, f); });
  std::printf("scale math: %s\n", bad ? "FAILED" : "exact");
  return bad ? 1 : 0;
}
