// SPDX-License-Identifier: Apache-2.0
// Argument checks of the ops (ops.cpp): a bad argument raises std::runtime_error with a message
// that names the op and the argument ("fusion_kernels.<op>: ...").
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fusion_kernels {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Messages are assembled with std::string and snprintf rather than iostreams: formatting a
// number through an ostringstream inside an extension kernel crashed on torch 2.11's CPU build.
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
template <typename T>
void append(std::string& s, T v) {
  char buf[64];
  if constexpr (std::is_floating_point_v<T>) {
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
  }
  s += buf;
}

template <typename... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  std::string msg = std::string("fusion_kernels.") + op + ": ";
  (append(msg, args), ...);
  throw std::runtime_error(msg);
}

// A dtype in messages as torch spells it (torch.float16, not c10's Half).
const char* name_of(ScalarType t);

// Each raises (fail) when its argument is bad; `op` names the op in the message.
void check_input(const char* op, const Tensor& input);
void check_weight(const char* op, const Tensor& weight, const Tensor& input);
void check_residual(const char* op, const Tensor& residual, const Tensor& input);
void check_scalar_scale(const char* op, const char* name, const Tensor& scale, const Tensor& input);
void check_fp8_dtype(const char* op, const char* name, ScalarType t, bool allow_int8);
void check_epsilon(const char* op, double epsilon);
void check_group(const char* op, const Tensor& input, int64_t group_size, bool column_major_scales,
                 bool tma_aligned_scales = false);
// The rule ops' arguments other than tensors (the hidden size's divisibility by a group size is
// check_group's): the quant dtype, the group size (0: one scale per row) and the scale rule,
// whose floats are judged as the float32 values the kernels receive (to_float32).
void check_rule(const char* op, ScalarType quant_dtype, int64_t group_size, double divisor, double absmax_floor,
                double scale_floor, double zero_scale, ScalarType scale_dtype, bool round_quotient);

// A schema float as the kernels receive it: rounded to float32 (to nearest even; beyond the
// largest float32, +-Inf).
inline float to_float32(double v) {
  if (v >= 0x1.ffffffp+127) return std::numeric_limits<float>::infinity();
  if (v <= -0x1.ffffffp+127) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

}  // namespace fusion_kernels
