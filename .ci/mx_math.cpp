// SPDX-License-Identifier: Apache-2.0
// Exhaustive check of the microscaling helpers of csrc/microscaling.h (the CPU kernels' raw-float
// conversions) against models written from the definitions of the PTX conversions and of
// fusion_kernels.microscaling (kernels/microscaling.py), over every fp32 bit pattern (NaNs,
// infinities, subnormals and -0 included):
//   f32_to_e2m1       cvt.rn.satfinite.e2m1x2.f32 per element: the nearest of the 15 e2m1 values
//                     (search over the table), ties to the even code, finite values and Inf beyond
//                     6 saturate to +-6, the sign kept (-0 and negatives rounding to 0 give 0x8);
//                     NaN gives 7 with NaN's sign (the spec's choice: e2m1 has no NaN).
//   e2m1_of_bf16(f32_to_bf16_odd(x))
//                     the GPU kernels' packed e2m1 conversion of 16-bit rows, step by step (x
//                     rounded to odd in bf16, then three bf16 fmas that each round one piece of
//                     the code, and their minimum): equal to the e2m1 model for every non-NaN x.
//   pack_e2m1x8       the packed word of a slot's eight codes with their signs: every non-NaN
//                     bf16 value at each of the eight positions, against the model's codes.
//   f32_to_ue8m0_rp   cvt.rp.satfinite.ue8m0x2.f32 per element: the smallest power of two
//                     2^k >= x, k in [-127, 127] (byte k + 127); 0 and x <= 2^-127 give 0, x > 2^127
//                     and +Inf 254 (satfinite), NaN 255. Negative x is outside the spec
//                     (microscaling.f32_to_ue8m0 raises); the helper ignores the sign, checked
//                     against the model of |x| on a line of its own.
//   mx_block_scale    every mode (floor, rceil, ceil, even) x element format (e4m3: max 448,
//                     emax 8, 3 mantissa bits; e5m2: 57344, 15, 2; e2m1: 6, 2, 1) over every
//                     amax >= 0 (+-0, subnormals, +Inf) and every NaN, as microscaling.mx_block_scale
//                     defines them: floor 2^(floor(log2 amax) - emax), ceil 2^(ceil(log2 amax) - emax),
//                     even 2^(floor(log2 amax') - emax) with amax' amax rounded to the format's
//                     mantissa bits (ties away), byte clamped to [0, 254] (so 0 for amax 0 and
//                     every subnormal); rceil the ue8m0 model of the fp32 quotient amax / max;
//                     NaN 255; +Inf 255 - emax in floor/ceil/even (torchao takes Inf's exponent
//                     field, 255), 254 in rceil.
//   f32_to_e4m3fn     cvt.rn.satfinite.e4m3x2.f32 per element (the NVFP4 block scales): the
//                     nearest of the 127 finite e4m3fn magnitudes, ties to the even code, beyond
//                     448 (Inf included) +-448 (0x7E | sign), NaN 0x7F with NaN's sign.
//   e4m3fn_to_f32, e8m0_to_f32: every byte, against the value from the format's definition.
// The models (.ci/mx_models.h) never call the helpers: the values are tables built with ldexp in
// double, and the result is found by a search over them (memoized: an interval walk whose answer
// for the previous input is re-verified, valid because the sweep visits magnitudes in increasing
// order).
// Built and run (CPU only, no torch; 2 threads; tests/ops/test_mx_math.py does the same):
//   g++ -O2 -std=c++17 -pthread -Icsrc .ci/mx_math.cpp -o mx_math && ./mx_math
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "microscaling.h"
#include "mx_models.h"

namespace {

// --- the sweeps --------------------------------------------------------------------------------

// Which magnitudes a sweep visits: all of them (stride 1, the default), or with --stride N every
// N-th plus every pattern of the windows: kWindow patterns at each end of every binade (every
// exponent field: powers of two, the floor / ceil / ue8m0 steps, Inf and the NaN ends) and around
// every point where a model's result changes - each e2m1 and e4m3 midpoint (and the ones above
// 6 and 448), 2^-127, the even mode's rounding thresholds and the rceil thresholds.
uint32_t stride = 1;
constexpr uint32_t kWindow = 256;
std::vector<std::pair<uint64_t, uint64_t>> windows;  // sorted, disjoint [begin, end)

void add_window_at(double v) {
  const float f = static_cast<float>(v);  // the nearest fp32
  if (!(f >= 0) || std::isinf(f)) return;
  const uint64_t b = as_bits(f);
  windows.push_back({b > kWindow ? b - kWindow : 0, std::min<uint64_t>(b + kWindow + 1, 0x80000000ull)});
}

void build_windows() {
  for (uint64_t e = 0; e < 256; ++e) {
    windows.push_back({e << 23, (e << 23) + kWindow});
    windows.push_back({((e + 1) << 23) - kWindow, (e + 1) << 23});
  }
  for (int c = 0; c < 7; ++c) add_window_at((e2m1_values[c] + e2m1_values[c + 1]) / 2);
  for (int c = 0; c < 126; ++c) add_window_at((e4m3_values[c] + e4m3_values[c + 1]) / 2);
  for (double v : {6.0, 7.0, 8.0, 448.0, 464.0, 480.0, pow2(-127)}) add_window_at(v);  // + the ue8m0 0/1 step
  for (const Format& f : kFormats) {
    for (int k = -149; k <= 127; ++k) add_window_at(pow2(k + 1) - pow2(k - f.mbits - 1));
    for (int j = -127; j <= 127; ++j) add_window_at(f.qmax * (pow2(j) + (j == -127 ? pow2(-150) : pow2(j - 24))));
  }
  std::sort(windows.begin(), windows.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (const auto& w : windows) {
    if (!merged.empty() && w.first <= merged.back().second)
      merged.back().second = std::max(merged.back().second, w.second);
    else
      merged.push_back(w);
  }
  windows = merged;
}

// Calls f(m) for the visited magnitudes m of [lo, hi), in increasing order; returns their count.
template <typename F>
uint64_t visit(uint32_t lo, uint32_t hi, F&& f) {
  if (stride == 1) {
    for (uint32_t m = lo; m < hi; ++m) f(m);
    return hi - lo;
  }
  uint64_t count = 0;
  size_t w = 0;
  for (uint64_t m = lo; m < hi;) {
    f(static_cast<uint32_t>(m));
    ++count;
    while (w < windows.size() && windows[w].second <= m + 1) ++w;
    uint64_t next = (m / stride + 1) * stride;
    if (w < windows.size()) next = std::min(next, std::max<uint64_t>(windows[w].first, m + 1));
    m = next;
  }
  return count;
}

// Each sweep visits the magnitudes [lo, hi) (bit patterns 0..0x7FFFFFFF, increasing in value)
// and checks both signs where the function is defined for them.

void sweep_e2m1(uint32_t lo, uint32_t hi, Tally& t, Tally& fin, Tally& odd) {
  RnSatModel model{{e2m1_values, 8}, 7, 7};
  uint64_t finite = 0;
  t.checked = 2 * visit(lo, hi, [&](uint32_t m) {
    const int want = model(as_float(m));
    t.check(m, mx::f32_to_e2m1(as_float(m)), want);
    t.check(m | 0x80000000u, mx::f32_to_e2m1(as_float(m | 0x80000000u)), want | 8);
    if (m <= 0x7F800000u) {  // f32_to_e2m1_finite: every non-NaN input (Inf saturates too)
      fin.check(m, mx::f32_to_e2m1_finite(as_float(m)), want);
      fin.check(m | 0x80000000u, mx::f32_to_e2m1_finite(as_float(m | 0x80000000u)), want | 8);
      // The GPU's packed path: x rounded to odd in bf16, then the bf16 conversion's steps.
      odd.check(m, mx::e2m1_of_bf16(mx::f32_to_bf16_odd(as_float(m))), want);
      odd.check(m | 0x80000000u, mx::e2m1_of_bf16(mx::f32_to_bf16_odd(as_float(m | 0x80000000u))), want | 8);
      ++finite;
    }
  });
  fin.checked = 2 * finite;
  odd.checked = 2 * finite;
}

// The GPU's packed FP4 word of a bf16 slot (mx::pack_e2m1x8 of the lanes' mx::e2m1_mag_bf16):
// every non-NaN bf16 value at each of the slot's 8 positions, the other 7 from a fixed
// pseudo-random sequence of non-NaN bf16 values; want: each element's code from the e2m1 model,
// element 2i in the low nibble of byte i. (Input reported: the value | position << 16.)
void check_pack_e2m1x8(Tally& t) {
  RnSatModel model{{e2m1_values, 8}, 7, 7};
  static int code[0x10000];
  for (uint32_t m = 0; m <= 0x7F80u; ++m) {  // increasing magnitudes (the model's memo)
    code[m] = model(as_float(m << 16));
    code[m | 0x8000u] = code[m] | 8;
  }
  uint32_t state = 12345u;
  auto next_bf16 = [&] {
    uint32_t h;
    do {
      state = state * 1664525u + 1013904223u;
      h = state >> 16;
    } while ((h & 0x7FFFu) > 0x7F80u);
    return h;
  };
  auto mag = [](uint32_t h) { return mx::e2m1_mag_bf16(as_float((h & 0x7FFFu) << 16)); };
  for (uint32_t v = 0; v < 0x10000u; ++v) {
    if ((v & 0x7FFFu) > 0x7F80u) continue;
    for (uint32_t e = 0; e < 8; ++e) {
      uint32_t h[8], y[4], r[4], want = 0;
      for (uint32_t k = 0; k < 8; ++k) h[k] = k == e ? v : next_bf16();
      for (int p = 0; p < 4; ++p) {
        y[p] = h[2 * p] | (h[2 * p + 1] << 16);
        r[p] = mag(h[2 * p]) | (mag(h[2 * p + 1]) << 16);
      }
      for (uint32_t k = 0; k < 8; ++k) want |= static_cast<uint32_t>(code[h[k]]) << (4 * k);
      t.check(v | (e << 16), mx::pack_e2m1x8(r, y), want);
      ++t.checked;
    }
  }
}

void sweep_e4m3(uint32_t lo, uint32_t hi, Tally& t) {
  RnSatModel model{{e4m3_values, 127}, 126, 127};
  t.checked = 2 * visit(lo, hi, [&](uint32_t m) {
    const int want = model(as_float(m));
    t.check(m, mx::f32_to_e4m3fn(as_float(m)), want);
    t.check(m | 0x80000000u, mx::f32_to_e4m3fn(as_float(m | 0x80000000u)), want | 0x80);
  });
}

// In the spec's domain (x >= 0, -0, NaN of either sign) into t; other negatives, against the
// model of |x|, into neg.
void sweep_ue8m0(uint32_t lo, uint32_t hi, Tally& t, Tally& neg) {
  Ue8m0Model model;
  uint64_t in_domain = 0;  // -0 and the negative NaNs
  const uint64_t n = visit(lo, hi, [&](uint32_t m) {
    const int want = model(as_float(m));
    t.check(m, mx::f32_to_ue8m0_rp(as_float(m)), want);
    const bool in = m == 0 || m > 0x7F800000u;
    in_domain += in;
    (in ? t : neg).check(m | 0x80000000u, mx::f32_to_ue8m0_rp(as_float(m | 0x80000000u)), want);
  });
  t.checked = n + in_domain;
  neg.checked = n - in_domain;
}

// amax >= 0 (+Inf included), -0 and every NaN; t[mode * 3 + format].
template <int kMode>
void check_modes(uint32_t in, float a, const int (&want)[4][3], Tally* t) {
  constexpr mx::ScaleMode hm = kModes[kMode].helper;
  t[kMode * 3 + 0].check(in, mx::mx_block_scale(a, kFormats[0].helper, hm), want[kMode][0]);
  t[kMode * 3 + 1].check(in, mx::mx_block_scale(a, kFormats[1].helper, hm), want[kMode][1]);
  t[kMode * 3 + 2].check(in, mx::mx_block_scale(a, kFormats[2].helper, hm), want[kMode][2]);
}

void sweep_block_scale(uint32_t lo, uint32_t hi, Tally* t /* [12] */) {
  BlockScaleModel model;
  int want[4][3];
  uint64_t negative = 0;  // -0 and the negative NaNs
  const uint64_t n = visit(lo, hi, [&](uint32_t m) {
    const float a = as_float(m);
    model(a, want);
    check_modes<0>(m, a, want, t);
    check_modes<1>(m, a, want, t);
    check_modes<2>(m, a, want, t);
    check_modes<3>(m, a, want, t);
    if (m == 0 || m > 0x7F800000u) {
      const uint32_t neg = m | 0x80000000u;
      ++negative;
      check_modes<0>(neg, as_float(neg), want, t);
      check_modes<1>(neg, as_float(neg), want, t);
      check_modes<2>(neg, as_float(neg), want, t);
      check_modes<3>(neg, as_float(neg), want, t);
    }
  });
  for (int i = 0; i < 12; ++i) t[i].checked = n + negative;
}

// --- reporting ---------------------------------------------------------------------------------

double section_seconds = 0;  // of the last in_threads run

uint64_t report(const char* what, const Tally& t) {
  std::printf("%s: %llu mismatches in %llu inputs (%.1f s)", what, static_cast<unsigned long long>(t.bad),
              static_cast<unsigned long long>(t.checked), section_seconds);
  for (int i = 0; i < t.n; ++i)
    std::printf("%s 0x%08x (helper 0x%02x, model 0x%02x)", i ? "," : "; first:", t.first[i].in, t.first[i].got,
                t.first[i].want);
  std::printf("\n");
  std::fflush(stdout);
  return t.bad;
}

constexpr int kThreads = 2;

// Runs fn(lo, hi, tallies...) over the magnitudes split in kThreads ranges and merges the tallies
// in range order.
template <int N, typename Fn>
void in_threads(Tally (&out)[N], Fn fn) {
  const auto start = std::chrono::steady_clock::now();
  Tally parts[kThreads][N];
  std::vector<std::thread> threads;
  const uint64_t total = 0x80000000ull;
  for (int i = 0; i < kThreads; ++i) {
    const uint32_t lo = static_cast<uint32_t>(total * i / kThreads);
    const uint32_t hi = static_cast<uint32_t>(total * (i + 1) / kThreads);
    threads.emplace_back([=, &parts] {
      Tally local[N];  // on the thread's own stack: no false sharing of the counters
      fn(lo, hi, local);
      for (int j = 0; j < N; ++j) parts[i][j] = local[j];
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kThreads; ++i)
    for (int j = 0; j < N; ++j) out[j].merge(parts[i][j]);
  section_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--stride" && i + 1 < argc) {
      stride = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      std::fprintf(stderr, "usage: %s [--stride N]  (N >= 1; default 1: every fp32)\n", argv[0]);
      return 2;
    }
  }
  if (stride < 1) {
    std::fprintf(stderr, "--stride must be >= 1\n");
    return 2;
  }
  build_tables();
  build_windows();
  std::printf("sweep: %s\n", stride == 1 ? "every fp32 bit pattern"
                                         : ("stride " + std::to_string(stride) + " plus windows").c_str());
  uint64_t bad = 0;

  {
    Tally t[3];
    in_threads(t, [](uint32_t lo, uint32_t hi, Tally* p) { sweep_e2m1(lo, hi, p[0], p[1], p[2]); });
    bad += report("f32_to_e2m1 (cvt.rn.satfinite.e2m1x2.f32)", t[0]);
    bad += report("f32_to_e2m1_finite (the same, non-NaN x)", t[1]);
    bad += report("e2m1_of_bf16(f32_to_bf16_odd(x)) (the GPU's packed steps, non-NaN x)", t[2]);
  }
  {
    Tally t;
    const auto start = std::chrono::steady_clock::now();
    check_pack_e2m1x8(t);
    section_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bad += report("pack_e2m1x8 (the GPU's packed FP4 word: every bf16 value at each position)", t);
  }
  {
    Tally t[2];
    in_threads(t, [](uint32_t lo, uint32_t hi, Tally* p) { sweep_ue8m0(lo, hi, p[0], p[1]); });
    bad += report("f32_to_ue8m0_rp (cvt.rp.satfinite.ue8m0x2.f32)", t[0]);
    bad += report("f32_to_ue8m0_rp negative x (outside the spec; helper: sign ignored)", t[1]);
  }
  {
    Tally t[12];
    in_threads(t, [](uint32_t lo, uint32_t hi, Tally* p) { sweep_block_scale(lo, hi, p); });
    for (int i = 0; i < 12; ++i) {
      char what[64];
      std::snprintf(what, sizeof(what), "mx_block_scale %s %s", kModes[i / 3].name, kFormats[i % 3].name);
      bad += report(what, t[i]);
    }
  }
  {
    Tally t[1];
    in_threads(t, [](uint32_t lo, uint32_t hi, Tally* p) { sweep_e4m3(lo, hi, p[0]); });
    bad += report("f32_to_e4m3fn (cvt.rn.satfinite.e4m3x2.f32)", t[0]);
  }
  {
    // The decoders, every byte; NaN results compare as the canonical NaN's bits.
    Tally e4m3, e8m0;
    section_seconds = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const int c = b & 0x7F;
      const double v = c == 0x7F ? NAN : e4m3_values[c];
      const float want = static_cast<float>(b & 0x80 ? -v : v);
      const float got = mx::e4m3fn_to_f32(static_cast<uint8_t>(b));
      e4m3.check(b, std::isnan(got) ? 0x7FC00000u : as_bits(got), std::isnan(want) ? 0x7FC00000u : as_bits(want));
      const float want8 = b == 255 ? NAN : static_cast<float>(pow2(static_cast<int>(b) - 127));
      const float got8 = mx::e8m0_to_f32(static_cast<uint8_t>(b));
      e8m0.check(b, std::isnan(got8) ? 0x7FC00000u : as_bits(got8),
                 std::isnan(want8) ? 0x7FC00000u : as_bits(want8));
    }
    e4m3.checked = e8m0.checked = 256;
    bad += report("e4m3fn_to_f32 (every byte)", e4m3);
    bad += report("e8m0_to_f32 (every byte)", e8m0);
  }
  std::printf("mx math: %s\n", bad ? "FAILED" : "exact");
  return bad ? 1 : 0;
}
