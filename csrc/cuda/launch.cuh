// SPDX-License-Identifier: Apache-2.0
// Host side of the CUDA row op: picks the thread mapping (from H only), the aligned or
// element-wise access path, the register-cached or re-reading variant, the latency or throughput
// variant and the rows per block (from the number of rows: neither changes a row's arithmetic),
// and launches on the caller's stream. Included by one .cu per quant mode so the instantiations compile in parallel.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/row_op_kernels.cuh"

namespace fusion_kernels {
namespace dev {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fusion_kernels: ") + what + ": " + cudaGetErrorString(err));
}

struct LaunchShape {
  int tpr;  // threads per row (power of two, >= warp size, <= kMaxThreads)
  int rows_per_block;
  bool cached;
};

// The thread mapping depends on the hidden size and the element width only: never on the
// number of rows (batch invariance) and never on the quant mode (fused == unfused bit for bit).
// `rows_per_block` is the default grouping of rows; launch_variant may lower it for few rows.
inline LaunchShape launch_shape(int64_t hidden, int elem_bytes) {
  const int64_t V = 16 / elem_bytes;
  const int64_t nslots = (hidden + V - 1) / V;
  int64_t tpr = kWarpSize;
  while (tpr < kMaxThreads && tpr * kCachedSlots < nslots) tpr *= 2;
  LaunchShape s;
  s.tpr = static_cast<int>(tpr);
  s.cached = nslots <= tpr * kCachedSlots;
  s.rows_per_block = tpr >= kRowsBlockThreads ? 1 : static_cast<int>(kRowsBlockThreads / tpr);
  return s;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline int sm_count(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device), "query SM count");
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

#ifndef FK_PDL
#define FK_PDL 1
#endif
// Programmatic dependent launch (see grid_dependency_wait): on sm_90+ unless built with
// FK_PDL=0 or turned off at run time with FUSION_KERNELS_PDL=0.
inline bool pdl_enabled(int device) {
#if FK_HIP || !FK_PDL
  (void)device;
  return false;
#else
  static const bool env_on = [] {
    const char* v = std::getenv("FUSION_KERNELS_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  if (!env_on) return false;
  static std::atomic<int> cache[64];  // 0 unknown, 1 no, 2 yes
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "query compute capability");
    v = major >= 9 ? 2 : 1;
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v == 2;
#endif
}

template <auto kernel>
int resident_blocks_per_sm(int threads, size_t smem, int device) {
  // Per kernel (a template argument: every instantiation has the same type), per device, per
  // block size (a power of two, 32 to 512 threads).
  static std::atomic<int> cache[64][5];
  if (device < 0 || device >= 64) device = 0;
  int slot = 0;
  while (slot < 4 && (kWarpSize << slot) < threads) ++slot;
  int v = cache[device][slot].load(std::memory_order_relaxed);
  if (v == 0) {
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, threads, smem), "occupancy query");
    if (v < 1) v = 1;
    cache[device][slot].store(v, std::memory_order_relaxed);
  }
  return v;
}

#ifndef FK_SMEM_CARVEOUT  // tuning: the preferred shared-memory carveout (percent) of kernels that
#define FK_SMEM_CARVEOUT -1  // use dynamic shared memory; -1 leaves it to the driver
#endif
// Kernels with dynamic shared memory: above the default 48 KB per block it must be allowed, per
// kernel and device; the carveout preference is set once per kernel and device.
template <auto kernel>
void configure_dynamic_smem(size_t bytes, int device) {
  static std::atomic<size_t> allowed[64];  // bytes allowed + 1; 0: not configured yet
  if (device < 0 || device >= 64) device = 0;
  const size_t have = allowed[device].load(std::memory_order_relaxed);
  if (have > bytes) return;
  if (have == 0 && FK_SMEM_CARVEOUT >= 0)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, FK_SMEM_CARVEOUT),
               "shared memory carveout");
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "shared memory attribute");
  allowed[device].store(bytes + 1, std::memory_order_relaxed);
}

#ifndef FK_SPLIT_MAX  // the latency variant's blocks per row, at most (a power of two)
#define FK_SPLIT_MAX 4
#endif
#ifndef FK_LATENCY_GRID
#define FK_LATENCY_GRID 2
#endif
#ifndef FK_WSMEM_GROUP_ROWS_PER_SM
#define FK_WSMEM_GROUP_ROWS_PER_SM 32
#endif
// The group quant without a residual stages its weight in shared memory on rows of at most 128
// threads, and on longer rows up to FK_WSMEM_GROUP_ROWS_PER_SM rows per SM (see launch_row_op).
inline bool group_stages_weight(int tpr, int64_t rows, int device) {
  return tpr <= 128 || rows <= static_cast<int64_t>(FK_WSMEM_GROUP_ROWS_PER_SM) * sm_count(device);
}

// The latency variant of the kernel (norm weight in registers, launched with programmatic
// dependent launch where available) runs grids of at most this many blocks per SM.
constexpr int kLatencyGridPerSm = FK_LATENCY_GRID;

#ifndef FK_WIDE_ROWS_PER_SM  // 0 turns the WIDE instantiation off (BENCHMARKS.md, item 32)
#define FK_WIDE_ROWS_PER_SM 64
#endif
// Per-token and group without a residual run under 40 registers (more blocks in flight, which
// rows of more than 128 threads and grids of many waves need). Rows of at most 128 threads, up to
// FK_WIDE_ROWS_PER_SM rows per SM, take the same kernel under 56 registers (the WIDE
// instantiation): fewer instructions per row, which at a few waves is the ramp and the tail
// (measured 12-18% faster at 1024 rows of H = 4096, 2-4% at 4096). Same arithmetic, so the same
// bits: a row's outputs do not depend on which of the two ran.
inline bool wide_registers(int tpr, int64_t rows, int device) {
  return tpr <= 128 && tpr <= kRowsBlockThreads && rows <= static_cast<int64_t>(FK_WIDE_ROWS_PER_SM) * sm_count(device);
}

// Launches `kernel` on `stream`, with programmatic dependent launch when `pdl` (CUDA only: the
// kernel then may start while the previous one on the stream finishes; it waits with
// grid_dependency_wait before touching memory).
template <typename Kernel, typename... Args>
void launch_kernel(Kernel kernel, int64_t grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                   Args... args) {
#if !FK_HIP
  if (pdl) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(grid));
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    check_cuda(cudaLaunchKernelEx(&config, kernel, args...), "kernel launch");
    return;
  }
#else
  (void)pdl;
#endif
  kernel<<<static_cast<unsigned>(grid), block, smem, stream>>>(args...);
  check_cuda(cudaGetLastError(), "kernel launch");
}

template <typename T, typename W, OutKind OUT, QuantMode Q, bool RULE, int GRUN, bool NORM, bool RES, bool ALIGNED, bool CACHED,
          bool WREGS = false, bool WSMEM = false, bool WIDE = false>
void launch_variant(const RowOpParams& p, const LaunchShape& shape, cudaStream_t stream, int device) {
  constexpr auto kernel = &row_op_kernel<T, W, OUT, Q, RULE, GRUN, NORM, RES, ALIGNED, CACHED, WREGS, WSMEM, WIDE>;
  // Rows per block only groups rows (a row's reduction order depends on tpr alone), so it may
  // follow the row count: when the rows would not fill the SMs anyway, one row per block
  // spreads them over more SMs.
  int rpb = shape.rows_per_block;
  if (rpb > 1 && p.rows < static_cast<int64_t>(rpb) * sm_count(device)) rpb = 1;
  const dim3 block(shape.tpr, rpb);
  // Dynamic shared memory: the staged norm weight of the throughput variant (weight_in_smem).
  size_t smem = 0;
  if constexpr (WSMEM) {
    smem = static_cast<size_t>(shape.tpr) * rpb * weight_smem_bytes_per_thread<T, W>();
    configure_dynamic_smem<kernel>(smem, device);
  }
  const int64_t row_groups = (p.rows + rpb - 1) / rpb;
  // The latency variant splits a row over up to FK_SPLIT_MAX blocks while they fit in one
  // wave on the SMs (the kernel's `split`: same reduction, each block stores a share).
  int split = 1, split_log2 = 0;  // (the kernel takes log2: a shift and a mask instead of a division)
  if constexpr (WREGS) {
    while (split < FK_SPLIT_MAX && split * 2 <= kCachedSlots && row_groups * split * 2 <= sm_count(device)) {
      split *= 2;
      ++split_log2;
    }
  }
#ifndef FK_PERSISTENT
#define FK_PERSISTENT 0
#endif
  // One block per row group by default (measured fastest, see BENCHMARKS.md); a persistent
  // grid (as many blocks as fit at once, each looping over row groups) is a tuning option.
  int64_t grid = row_groups * split;
  if constexpr (FK_PERSISTENT) {
    const int64_t resident = static_cast<int64_t>(sm_count(device)) * resident_blocks_per_sm<kernel>(shape.tpr * rpb, smem, device);
    if (row_groups > resident) grid = resident;
  }
  // Programmatic dependent launch: ~0.5 µs off a call of a few rows, and on grids of many waves
  // each call's ramp-up overlaps the previous kernel's end (BENCHMARKS.md, items 6 and 18).
#ifndef FK_PDL_ALL  // tuning: 0 keeps it to the latency variant
#define FK_PDL_ALL 1
#endif
  launch_kernel(kernel, grid, block, smem, stream, (WREGS || FK_PDL_ALL) && pdl_enabled(device), p, split_log2);
}

template <typename T, typename W, OutKind OUT, QuantMode Q, bool RULE, int GRUN, bool NORM, bool RES>
void launch_row_op(const RowOpParams& p, cudaStream_t stream, int device) {
  const int elem = static_cast<int>(sizeof(T));
  const LaunchShape shape = launch_shape(p.hidden, elem);
  const int64_t V = 16 / elem;
  bool aligned = p.hidden % V == 0 && aligned16(p.input) && p.input_row_stride % V == 0;
  if (RES) aligned = aligned && aligned16(p.residual) && p.residual_row_stride % V == 0;
  if (NORM) aligned = aligned && aligned16(p.weight);
  if (aligned) {
    if constexpr (NORM) {
      if (shape.cached && kLatencyGridPerSm > 0 &&
          p.rows <= static_cast<int64_t>(kLatencyGridPerSm) * sm_count(device) * shape.rows_per_block)
        return launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, true, true, true>(p, shape, stream, device);
    }
    if (shape.cached) {
      // The throughput variant stages the norm weight in shared memory (weight_in_smem), except
      // for the group quant without a residual on grids of many waves of rows of more than 128
      // threads: there the kernel is bound by its instructions at HBM speed and the staging's
      // few per row cost more than the weight's round trip after the reduction (BENCHMARKS.md,
      // item 29).
      constexpr bool wsmem = weight_in_smem<NORM, true, true, false>();
      if constexpr (wsmem && Q == QuantMode::kPerGroup && !RES) {
        if (!group_stages_weight(shape.tpr, p.rows, device))
          return launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, true, true, false, false>(p, shape, stream, device);
      }
      if constexpr (FK_WIDE_ROWS_PER_SM > 0 && wsmem && !RES && (Q == QuantMode::kPerToken || Q == QuantMode::kPerGroup)) {
        if (wide_registers(shape.tpr, p.rows, device))
          return launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, true, true, false, true, true>(p, shape, stream, device);
      }
      launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, true, true, false, wsmem>(p, shape, stream, device);
    } else {
      launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, true, false>(p, shape, stream, device);
    }
  } else {
    if (shape.cached)
      launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, false, true>(p, shape, stream, device);
    else
      launch_variant<T, W, OUT, Q, RULE, GRUN, NORM, RES, false, false>(p, shape, stream, device);
  }
}

// The residual add exists only together with the norm.
template <typename T, typename W, OutKind OUT, QuantMode Q, bool RULE, int GRUN, bool NORM>
void launch_for_residual(const RowOpParams& p, cudaStream_t stream, int device) {
  if constexpr (NORM) {
    if (p.residual != nullptr) return launch_row_op<T, W, OUT, Q, RULE, GRUN, true, true>(p, stream, device);
  }
  launch_row_op<T, W, OUT, Q, RULE, GRUN, NORM, false>(p, stream, device);
}

// A 16-bit model may keep its norm weight in fp32; the weight type is then a kernel parameter.
template <typename T, OutKind OUT, QuantMode Q, bool RULE, int GRUN, bool NORM>
void launch_for_weight_dtype(const RowOpParams& p, cudaStream_t stream, int device) {
  if constexpr (NORM && !std::is_same_v<T, float>) {
    if (p.weight_dtype == DType::kFloat32) return launch_for_residual<T, float, OUT, Q, RULE, GRUN, NORM>(p, stream, device);
  }
  launch_for_residual<T, T, OUT, Q, RULE, GRUN, NORM>(p, stream, device);
}

// The group quant's kernels are compiled per run length (GRUN = group_run_of the group size in
// slots: RUN, RUN / 2, ... down to that of the smallest group size); the other quant modes have
// one (GRUN 1).
template <typename T, OutKind OUT, QuantMode Q, bool RULE, bool NORM, int RUN = kRun>
void launch_for_group_run(const RowOpParams& p, cudaStream_t stream, int device) {
  if constexpr (Q == QuantMode::kPerGroup) {
    constexpr int V = 16 / sizeof(T);
    if (group_run_of(static_cast<int>(p.group_size / V)) == RUN)
      return launch_for_weight_dtype<T, OUT, Q, RULE, RUN, NORM>(p, stream, device);
    if constexpr (RUN > 1 && RUN > group_run_of(kMinGroupSize / V))
      return launch_for_group_run<T, OUT, Q, RULE, NORM, RUN / 2>(p, stream, device);
    throw std::runtime_error("fusion_kernels: unsupported group size");
  } else {
    launch_for_weight_dtype<T, OUT, Q, RULE, 1, NORM>(p, stream, device);
  }
}

template <OutKind OUT, QuantMode Q, bool RULE, bool NORM>
void launch_for_input_dtype(const RowOpParams& p, cudaStream_t stream, int device) {
  switch (p.in_dtype) {
    case DType::kFloat32: return launch_for_group_run<float, OUT, Q, RULE, NORM>(p, stream, device);
    case DType::kFloat16: return launch_for_group_run<fp16_t, OUT, Q, RULE, NORM>(p, stream, device);
    case DType::kBFloat16: return launch_for_group_run<bf16_t, OUT, Q, RULE, NORM>(p, stream, device);
    default: throw std::runtime_error("fusion_kernels: unsupported input dtype");
  }
}

template <QuantMode Q, bool RULE>
void launch_quantized_as(const RowOpParams& p, cudaStream_t stream, int device) {
  const bool norm = p.weight != nullptr;
  switch (p.out_dtype) {
    case DType::kFp8E4m3fn:
      return norm ? launch_for_input_dtype<OutKind::kE4m3fn, Q, RULE, true>(p, stream, device)
                  : launch_for_input_dtype<OutKind::kE4m3fn, Q, RULE, false>(p, stream, device);
    case DType::kFp8E4m3fnuz:
      return norm ? launch_for_input_dtype<OutKind::kE4m3fnuz, Q, RULE, true>(p, stream, device)
                  : launch_for_input_dtype<OutKind::kE4m3fnuz, Q, RULE, false>(p, stream, device);
    case DType::kInt8:
      if constexpr (Q != QuantMode::kPerGroup || RULE) {  // INT8 per-token-group: the rule ops only
        return norm ? launch_for_input_dtype<OutKind::kInt8, Q, RULE, true>(p, stream, device)
                    : launch_for_input_dtype<OutKind::kInt8, Q, RULE, false>(p, stream, device);
      }
      [[fallthrough]];
    default: throw std::runtime_error("fusion_kernels: unsupported output dtype for this quant mode");
  }
}

// One output dtype's kernels of a quant mode: the group modes' translation units hold one each
// (row_op_per_group[_rule][_fnuz|_int8].cu), so that a parallel build compiles them side by side.
template <OutKind OUT, QuantMode Q, bool RULE>
void launch_out_kind(const RowOpParams& p, cudaStream_t stream, int device) {
  if (p.weight != nullptr) {
    launch_for_input_dtype<OUT, Q, RULE, true>(p, stream, device);
  } else {
    launch_for_input_dtype<OUT, Q, RULE, false>(p, stream, device);
  }
}

[[noreturn]] inline void unsupported_out_dtype() {
  throw std::runtime_error("fusion_kernels: unsupported output dtype for this quant mode");
}

// The dynamic quant modes: the fixed-rule instantiation (RULE false) runs the per-token and
// per-token-group ops, the RULE one the rule ops (p.rule given at run time). Each is in a
// translation unit of its own (row_op_per_token[_rule].cu, row_op_per_group*.cu), so that a
// parallel build compiles them side by side.
template <QuantMode Q>
void launch_rule_op(const RowOpParams& p, cudaStream_t stream, int device) {
  static_assert(Q == QuantMode::kPerToken || Q == QuantMode::kPerGroup, "the rule ops are per-token or per-group");
  if constexpr (FK_GPU_RULE_OPS) {
    launch_quantized_as<Q, true>(p, stream, device);
  } else {
    (void)p, (void)stream, (void)device;
    throw std::runtime_error("fusion_kernels: this build has no GPU kernels for the rule ops (FK_GPU_RULE_OPS=0)");
  }
}

}  // namespace dev

// One per quant mode, each in its own translation unit.
void row_op_cuda_plain(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_static(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_token(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_group(const RowOpParams& p, cudaStream_t stream, int device);
// The rule ops' kernels (RowOpParams::rule given at run time), called by the two above.
void row_op_cuda_per_token_rule(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_group_rule(const RowOpParams& p, cudaStream_t stream, int device);
// The group modes' kernels of one output dtype each (called by the group functions above; their
// e4m3fn kernels are in the callers' own translation units).
void row_op_cuda_per_group_fnuz(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_group_rule_fnuz(const RowOpParams& p, cudaStream_t stream, int device);
void row_op_cuda_per_group_rule_int8(const RowOpParams& p, cudaStream_t stream, int device);
// Pass 2 of the per-tensor quant (per_tensor.h): the tensor's absmax from the rows', its scale.
void tensor_scale_cuda(const float* row_absmax, int64_t rows, float* scale, const ScaleRule& rule, DType out,
                       cudaStream_t stream);

}  // namespace fusion_kernels
