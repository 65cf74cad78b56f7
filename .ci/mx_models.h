// SPDX-License-Identifier: Apache-2.0
// The independent models that .ci/mx_math.cpp checks microscaling.h against (see its header for
// what each one models), and the mismatch tally. Tables built with ldexp in double; results found
// by search, never by calling the helpers. Included by mx_math.cpp only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "microscaling.h"

namespace mx = fusion_kernels::mx;

namespace {

float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

uint32_t as_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// Mismatch count and the first few mismatches (input bits, helper's result, model's result); the
// sweeps set `checked` (counted apart: a counter in memory per check costs a third of the time).
struct Tally {
  struct Miss {
    uint32_t in, got, want;
  };
  uint64_t checked = 0, bad = 0;
  Miss first[4];
  int n = 0;
  void check(uint32_t in, uint32_t got, uint32_t want) {
    if (got != want) {
      if (n < 4) first[n++] = {in, got, want};
      ++bad;
    }
  }
  void merge(const Tally& o) {
    checked += o.checked;
    bad += o.bad;
    for (int i = 0; i < o.n && n < 4; ++i) first[n++] = o.first[i];
  }
};

// --- the models --------------------------------------------------------------------------------

// 2^k as a double for k in [-160, 160] (the walks below step one past the fp32 range).
struct Pow2 {
  double v[321];
  Pow2() {
    for (int k = -160; k <= 160; ++k) v[k + 160] = std::ldexp(1.0, k);
  }
  double operator()(int k) const { return v[k + 160]; }
};
const Pow2 pow2;

// floor(log2(a)) / ceil(log2(a)) of a double a in [2^-149, 2^128] by a walk over the powers of
// two from the previous answer (the sweeps' inputs change slowly, so the walk is short).
struct Log2Walk {
  int k = 0;
  int floor_log2(double a) {
    while (a < pow2(k)) --k;
    while (a >= pow2(k + 1)) ++k;
    return k;
  }
  int ceil_log2(double a) {
    while (a <= pow2(k - 1)) --k;
    while (a > pow2(k)) ++k;
    return k;
  }
};

// The index of the value nearest to a in the ascending table v[0..n), ties to the even index.
// (Near a tie a is within a few units of the values, where the double differences are exact.)
int nearest_even(const double* v, int n, double a) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    const double di = std::fabs(a - v[i]), db = std::fabs(a - v[best]);
    if (di < db || (di == db && i % 2 == 0)) best = i;
  }
  return best;
}

// nearest_even, memoized: the answer of the last search stands for every a strictly between the
// midpoints around its value (for the nearest value, that is what "nearest" means).
struct NearestMemo {
  const double* v;
  int n;
  int idx = 0;
  double lo = 1, hi = 0;  // empty
  int operator()(double a) {
    if (a > lo && a < hi) return idx;
    idx = nearest_even(v, n, a);
    lo = idx > 0 ? (v[idx - 1] + v[idx]) / 2 : -INFINITY;
    hi = idx < n - 1 ? (v[idx] + v[idx + 1]) / 2 : INFINITY;
    return idx;
  }
};

// The 8 e2m1 magnitudes (code = index: exponent << 1 | mantissa) and the 127 finite e4m3fn ones
// (code = index: exponent << 3 | mantissa; bias 7, exponent 0 subnormal), from the definitions.
double e2m1_values[8];
double e4m3_values[127];
void build_tables() {
  for (int c = 0; c < 8; ++c) {
    const int e = c >> 1, m = c & 1;
    e2m1_values[c] = e == 0 ? m * 0.5 : std::ldexp(1.0 + m / 2.0, e - 1);
  }
  for (int c = 0; c < 127; ++c) {
    const int e = c >> 3, m = c & 7;
    e4m3_values[c] = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  }
}

// cvt.rn.satfinite.<fmt>.f32 of a magnitude (sign handled by the caller): the code.
struct RnSatModel {
  NearestMemo nearest;
  int max_code, nan_code;
  int operator()(float a) {
    if (std::isnan(a)) return nan_code;
    if (a >= nearest.v[max_code]) return max_code;  // satfinite (Inf included)
    return nearest(a);
  }
};

// cvt.rp.satfinite.ue8m0x2.f32 of one element x >= 0 or NaN: the byte.
struct Ue8m0Model {
  Log2Walk walk;
  int operator()(float x) {
    if (std::isnan(x)) return 255;
    const double a = x;
    if (a <= pow2(-127)) return 0;  // 0 included: the smallest E8M0 value is 2^-127
    if (a > pow2(127)) return 254;  // satfinite (+Inf included)
    return walk.ceil_log2(a) + 127;
  }
};

struct Format {
  const char* name;
  mx::ElemFormat helper;
  float qmax;
  int emax, mbits;
};
constexpr Format kFormats[3] = {
    {"e4m3", mx::ElemFormat::kE4m3, 448.0f, 8, 3},  // 1.75 * 2^8
    {"e5m2", mx::ElemFormat::kE5m2, 57344.0f, 15, 2},  // 1.75 * 2^15
    {"e2m1", mx::ElemFormat::kE2m1, 6.0f, 2, 1},  // 1.5 * 2^2
};
struct Mode {
  const char* name;
  mx::ScaleMode helper;
};
constexpr Mode kModes[4] = {{"floor", mx::ScaleMode::kFloor},
                        {"rceil", mx::ScaleMode::kRceil},
                        {"ceil", mx::ScaleMode::kCeil},
                        {"even", mx::ScaleMode::kEven}};

int clamp_byte(int b) { return b < 0 ? 0 : (b > 254 ? 254 : b); }

// mx_block_scale's definition, every mode (kModes order) and format (kFormats order): the E8M0
// bytes of amax >= 0, Inf or NaN.
//   floor: clamp(floor(log2 amax) + 127 - emax); ceil: clamp(ceil(log2 amax) + 127 - emax);
//   even: amax rounded to the format's mantissa bits mb, ties away from zero, then as floor - the
//     rounding reaches 2^(k+1) (k = floor(log2 amax)) exactly when amax >= 2^(k+1) - 2^(k-mb-1),
//     the midpoint between the largest mb-bit value below 2^(k+1) and 2^(k+1);
//   rceil: the ue8m0 model (cvt.rp) of q = fp32(amax / max) without dividing: fp32 rounding to
//     nearest even is monotone and 2^j has an even significand, so q <= 2^j exactly when
//     amax / max <= 2^j + (half the fp32 spacing above 2^j) = 2^j + 2^(j-24) (j >= -126), or
//     2^-127 + 2^-150 (j = -127, a subnormal); the thresholds max * (...) are exact in double.
// (Thresholds as doubles, compared with the exact amax: no fp32 arithmetic is shared with the
// helper.)
struct BlockScaleModel {
  double even_up[3][260];  // [f][k + 130]: 2^(k+1) - 2^(k-mb-1)
  double rceil_le[3][255];  // [f][j + 127]: max * (2^j + half the spacing above 2^j)
  Log2Walk floor_walk, ceil_walk;
  int rceil_j[3] = {0, 0, 0};
  BlockScaleModel() {
    for (int f = 0; f < 3; ++f) {
      for (int k = -130; k < 130; ++k) even_up[f][k + 130] = pow2(k + 1) - pow2(k - kFormats[f].mbits - 1);
      for (int j = -127; j <= 127; ++j)
        rceil_le[f][j + 127] = kFormats[f].qmax * (pow2(j) + (j == -127 ? pow2(-150) : pow2(j - 24)));
    }
  }
  int rceil(int f, double a) {
    const double* le = rceil_le[f] + 127;
    if (a <= le[-127]) return 0;  // zero included: the smallest E8M0 value
    if (a > le[127]) return 254;  // satfinite (+Inf included)
    int& j = rceil_j[f];  // walk to the smallest j in [-126, 127] with a <= le[j]
    while (j > -126 && a <= le[j - 1]) --j;
    while (a > le[j]) ++j;
    return j + 127;
  }
  void operator()(float amax, int (&byte)[4][3]) {
    if (std::isnan(amax)) {
      for (auto& mode : byte)
        for (int& b : mode) b = 255;
      return;
    }
    const double a = amax;
    for (int f = 0; f < 3; ++f) byte[1][f] = rceil(f, a);
    if (std::isinf(amax)) {  // floor, ceil, even: Inf's exponent field, 255
      for (int f = 0; f < 3; ++f) byte[0][f] = byte[2][f] = byte[3][f] = clamp_byte(255 - kFormats[f].emax);
      return;
    }
    if (a == 0) {  // 2^-inf: clamped
      for (int f = 0; f < 3; ++f) byte[0][f] = byte[2][f] = byte[3][f] = 0;
      return;
    }
    const int k = floor_walk.floor_log2(a), kc = ceil_walk.ceil_log2(a);
    for (int f = 0; f < 3; ++f) {
      const int emax = kFormats[f].emax;
      byte[0][f] = clamp_byte(k + 127 - emax);
      byte[2][f] = clamp_byte(kc + 127 - emax);
      byte[3][f] = clamp_byte(k + (a >= even_up[f][k + 130] ? 1 : 0) + 127 - emax);
    }
  }
};

}  // namespace
