// SPDX-License-Identifier: Apache-2.0
// Argument checks of the ops (ops.cpp): a bad argument raises std::runtime_error with a message
// that names the op and the argument ("fusion_kernels.<op>: ...").
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <cstdio>
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

// Each raises (fail) when its argument is bad; `op` names the op in the message.
void check_input(const char* op, const Tensor& input);
void check_weight(const char* op, const Tensor& weight, const Tensor& input);
void check_residual(const char* op, const Tensor& residual, const Tensor& input);
void check_scalar_scale(const char* op, const char* name, const Tensor& scale, const Tensor& input);
void check_fp8_dtype(const char* op, const char* name, ScalarType t, bool allow_int8);
void check_epsilon(const char* op, double epsilon);
void check_group(const char* op, const Tensor& input, int64_t group_size, bool column_major_scales);

}  // namespace fusion_kernels
