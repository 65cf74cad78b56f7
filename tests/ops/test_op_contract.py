# SPDX-License-Identifier: Apache-2.0
"""The ops' contract with torch: schemas, fakes (opcheck), compile, and clear errors."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusion_kernels import OP_NAMES
from fusion_kernels.fake import ALL_OP_NAMES, MX_OP_NAMES
from fusion_kernels.testing import assert_outputs_match, make_args, reference_of, to_cpu

ops = torch.ops.fusion_kernels

SCHEMAS = {
    "rms_norm": "fusion_kernels::rms_norm(Tensor input, Tensor weight, float epsilon) -> Tensor",
    "fused_add_rms_norm": "fusion_kernels::fused_add_rms_norm(Tensor input, Tensor residual, Tensor weight, float epsilon) -> (Tensor out, Tensor residual_out)",
    "static_scaled_fp8_quant": "fusion_kernels::static_scaled_fp8_quant(Tensor input, Tensor scale, ScalarType fp8_dtype) -> Tensor",
    "dynamic_per_token_scaled_fp8_quant": "fusion_kernels::dynamic_per_token_scaled_fp8_quant(Tensor input, Tensor? scale_ub, ScalarType fp8_dtype) -> (Tensor out, Tensor scales)",
    "per_token_group_fp8_quant": "fusion_kernels::per_token_group_fp8_quant(Tensor input, int group_size, bool column_major_scales, bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales=False) -> (Tensor out, Tensor scales)",
    "static_scaled_int8_quant": "fusion_kernels::static_scaled_int8_quant(Tensor input, Tensor scale) -> Tensor",
    "dynamic_scaled_int8_quant": "fusion_kernels::dynamic_scaled_int8_quant(Tensor input) -> (Tensor out, Tensor scales)",
    "rms_norm_static_fp8_quant": "fusion_kernels::rms_norm_static_fp8_quant(Tensor input, Tensor weight, Tensor scale, float epsilon, ScalarType fp8_dtype) -> Tensor",
    "fused_add_rms_norm_static_fp8_quant": "fusion_kernels::fused_add_rms_norm_static_fp8_quant(Tensor input, Tensor residual, Tensor weight, Tensor scale, float epsilon, ScalarType fp8_dtype) -> (Tensor out, Tensor residual_out)",
    "rms_norm_dynamic_per_token_quant": "fusion_kernels::rms_norm_dynamic_per_token_quant(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, Tensor? scale_ub) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_dynamic_per_token_quant": "fusion_kernels::fused_add_rms_norm_dynamic_per_token_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, ScalarType quant_dtype, Tensor? scale_ub) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "rms_norm_per_token_group_quant": "fusion_kernels::rms_norm_per_token_group_quant(Tensor input, Tensor weight, float epsilon, int group_size, bool column_major_scales, bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales=False) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_per_token_group_quant": "fusion_kernels::fused_add_rms_norm_per_token_group_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, int group_size, bool column_major_scales, bool scale_ue8m0, ScalarType fp8_dtype, bool tma_aligned_scales=False) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "per_token_group_fp8_quant_packed": "fusion_kernels::per_token_group_fp8_quant_packed(Tensor input, int group_size, ScalarType fp8_dtype) -> (Tensor out, Tensor scales)",
    "rms_norm_per_token_group_quant_packed": "fusion_kernels::rms_norm_per_token_group_quant_packed(Tensor input, Tensor weight, float epsilon, int group_size, ScalarType fp8_dtype) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_per_token_group_quant_packed": "fusion_kernels::fused_add_rms_norm_per_token_group_quant_packed(Tensor input, Tensor residual, Tensor weight, float epsilon, int group_size, ScalarType fp8_dtype) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "rms_norm_static_int8_quant": "fusion_kernels::rms_norm_static_int8_quant(Tensor input, Tensor weight, Tensor scale, float epsilon) -> Tensor",
    "fused_add_rms_norm_static_int8_quant": "fusion_kernels::fused_add_rms_norm_static_int8_quant(Tensor input, Tensor residual, Tensor weight, Tensor scale, float epsilon) -> (Tensor out, Tensor residual_out)",
    "dynamic_quant": "fusion_kernels::dynamic_quant(Tensor input, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales)",
    "rms_norm_dynamic_quant": "fusion_kernels::rms_norm_dynamic_quant(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_dynamic_quant": "fusion_kernels::fused_add_rms_norm_dynamic_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "rms_norm_dynamic_quant_with_norm_out": "fusion_kernels::rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales, Tensor norm_out)",
    "fused_add_rms_norm_dynamic_quant_with_norm_out": "fusion_kernels::fused_add_rms_norm_dynamic_quant_with_norm_out(Tensor input, Tensor residual, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales, Tensor residual_out, Tensor norm_out)",
    # The microscaling ops (fake.MX_OP_NAMES): not in OP_NAMES, tested in test_microscaling_ops.py.
    "mxfp8_quant": "fusion_kernels::mxfp8_quant(Tensor input, ScalarType fp8_dtype, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "mxfp4_quant": "fusion_kernels::mxfp4_quant(Tensor input, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "nvfp4_quant": "fusion_kernels::nvfp4_quant(Tensor input, Tensor global_scale, bool global_scale_is_multiplier, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "rms_norm_mxfp8_quant": "fusion_kernels::rms_norm_mxfp8_quant(Tensor input, Tensor weight, float epsilon, ScalarType fp8_dtype, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_mxfp8_quant": "fusion_kernels::fused_add_rms_norm_mxfp8_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, ScalarType fp8_dtype, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "rms_norm_mxfp4_quant": "fusion_kernels::rms_norm_mxfp4_quant(Tensor input, Tensor weight, float epsilon, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_mxfp4_quant": "fusion_kernels::fused_add_rms_norm_mxfp4_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, str scale_mode, bool swizzled_scales) -> (Tensor out, Tensor scales, Tensor residual_out)",
    "rms_norm_nvfp4_quant": "fusion_kernels::rms_norm_nvfp4_quant(Tensor input, Tensor weight, float epsilon, Tensor global_scale, bool global_scale_is_multiplier, bool swizzled_scales) -> (Tensor out, Tensor scales)",
    "fused_add_rms_norm_nvfp4_quant": "fusion_kernels::fused_add_rms_norm_nvfp4_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, Tensor global_scale, bool global_scale_is_multiplier, bool swizzled_scales) -> (Tensor out, Tensor scales, Tensor residual_out)",
}


def test_every_op_is_defined_with_its_schema():
    assert set(SCHEMAS) == set(ALL_OP_NAMES) == set(OP_NAMES) | set(MX_OP_NAMES)
    for name, schema in SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == schema


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_opcheck(op_name, device):
    kw = {"group_size": 64} if "group" in op_name else {}
    for tokens, dtype in [((5,), torch.bfloat16), ((2, 3), torch.float32)]:
        args = make_args(op_name, tokens, 256, dtype, device, **kw)
        torch.library.opcheck(getattr(ops, op_name).default, args)
    if "group" in op_name:
        args = make_args(op_name, (6,), 256, torch.float16, device, column_major_scales=True, scale_ue8m0=True, **kw)
        torch.library.opcheck(getattr(ops, op_name).default, args)


def test_every_op_under_torch_compile_fullgraph(device, fresh_dynamo):
    """All ops in one compiled function (one Inductor compile keeps CI fast), against eager."""
    cases = {}
    for name in OP_NAMES:
        kw = {"group_size": 64, "column_major_scales": "rms_norm" in name} if "group" in name else {}
        cases[name] = make_args(name, (9,), 320, torch.bfloat16, device, **kw)

    def run_all(cases):
        return {name: getattr(ops, name)(*args) for name, args in cases.items()}

    compiled = torch.compile(run_all, fullgraph=True)
    got = compiled(cases)
    eager = run_all(cases)
    for name in OP_NAMES:
        # The ops are opaque to Inductor: compiled and eager run the same kernel, bit for bit.
        a = got[name] if isinstance(got[name], tuple) else (got[name],)
        e = eager[name] if isinstance(eager[name], tuple) else (eager[name],)
        for x, y in zip(a, e):
            assert x.stride() == y.stride(), name
            assert torch.equal(x.view(torch.uint8) if x.element_size() == 1 else x,
                               y.view(torch.uint8) if y.element_size() == 1 else y), name  # fmt: skip
        expected = reference_of(name)(*[t.cpu() if isinstance(t, torch.Tensor) else t for t in cases[name]])
        assert_outputs_match(name, to_cpu(a) if len(a) > 1 else to_cpu(a[0]), expected, torch.bfloat16,
                             group_size=64)


# --- bad input ------------------------------------------------------------------------------------


def _call(op_name, **replace):
    kw = {"group_size": 64} if "group" in op_name else {}
    args = list(make_args(op_name, (4,), 128, torch.bfloat16, "cpu", **kw))
    names = [a.name for a in getattr(ops, op_name).default._schema.arguments]
    for k, v in replace.items():
        args[names.index(k)] = v(args[names.index(k)]) if callable(v) else v
    return getattr(ops, op_name)(*args)


def _arg_names(op_name):
    inside = SCHEMAS[op_name].split("(", 1)[1].rsplit(") ->", 1)[0]
    return [a.strip().split(" ")[-1] for a in inside.split(",")]


def _ops_with(arg):
    return [n for n in OP_NAMES if arg in _arg_names(n)]


BAD_INPUTS = [
    # Dtypes named as torch names them (torch.int32), not as C++ does (Int).
    ("input", lambda x: x.to(torch.int32), "input must be float32, float16 or bfloat16, got torch.int32"),
    ("input", lambda x: x.to(torch.float64), "input must be float32, float16 or bfloat16, got torch.float64"),
    ("input", lambda x: torch.empty(4, 0, dtype=torch.bfloat16), "hidden size (last dim) must be > 0"),
    (
        "input",
        lambda x: torch.empty(1, dtype=torch.bfloat16).expand(2, 2**30 + 1),  # no memory behind it
        "hidden size (last dim) must be at most 1073741824",
    ),
    ("input", lambda x: torch.randn(128, 4).to(torch.bfloat16).t(), "last dim must be contiguous"),
    ("input", lambda x: torch.tensor(1.0, dtype=torch.bfloat16), "at least one dimension"),
]


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize(
    "replace, make, message", BAD_INPUTS, ids=["int32", "float64", "H0", "Hhuge", "noncontig", "0dim"]
)
def test_bad_input_tensor(op_name, replace, make, message):
    with pytest.raises(RuntimeError, match=f"fusion_kernels.{op_name}: .*{re.escape(message)}"):
        _call(op_name, **{replace: make})


@pytest.mark.parametrize("op_name", _ops_with("weight"))
def test_bad_weight(op_name):
    with pytest.raises(RuntimeError, match=r"weight must have shape \[128\]"):
        _call(op_name, weight=lambda w: w[:64])
    with pytest.raises(RuntimeError, match="weight must have shape"):
        _call(op_name, weight=lambda w: w.reshape(2, 64))
    with pytest.raises(RuntimeError, match="weight must be float32 or the input's dtype"):
        _call(op_name, weight=lambda w: w.to(torch.float16))
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        _call(op_name, weight=lambda w: torch.randn(128, 2, dtype=torch.bfloat16)[:, 0])
    with pytest.raises(RuntimeError, match="epsilon must be finite and >= 0"):
        _call(op_name, epsilon=-1.0)
    with pytest.raises(RuntimeError, match="epsilon must be finite and >= 0"):
        _call(op_name, epsilon=float("nan"))


@pytest.mark.parametrize("op_name", _ops_with("residual"))
def test_bad_residual(op_name):
    with pytest.raises(RuntimeError, match="residual must have the input's shape"):
        _call(op_name, residual=lambda r: r[:2])
    with pytest.raises(RuntimeError, match="residual must have the input's dtype"):
        _call(op_name, residual=lambda r: r.float())
    with pytest.raises(RuntimeError, match="residual's last dim must be contiguous"):
        _call(op_name, residual=lambda r: torch.randn(128, 4, dtype=torch.bfloat16).t())


@pytest.mark.parametrize("op_name", _ops_with("scale"))
def test_bad_scale(op_name):
    with pytest.raises(RuntimeError, match="scale must hold exactly one element"):
        _call(op_name, scale=torch.ones(2))
    with pytest.raises(RuntimeError, match="scale must hold exactly one element"):
        _call(op_name, scale=torch.ones(1, 1))
    with pytest.raises(RuntimeError, match="scale must be float32, got torch.bfloat16"):
        _call(op_name, scale=torch.ones(1, dtype=torch.bfloat16))


@pytest.mark.parametrize("op_name", _ops_with("scale_ub"))
def test_bad_scale_ub(op_name):
    with pytest.raises(RuntimeError, match="scale_ub must hold exactly one element"):
        _call(op_name, scale_ub=torch.ones(3))
    with pytest.raises(RuntimeError, match="scale_ub must be float32, got torch.float16"):
        _call(op_name, scale_ub=torch.ones((), dtype=torch.float16))


@pytest.mark.parametrize("op_name", _ops_with("fp8_dtype") + _ops_with("quant_dtype"))
def test_bad_quant_dtype(op_name):
    arg = "fp8_dtype" if "fp8_dtype" in _arg_names(op_name) else "quant_dtype"
    with pytest.raises(RuntimeError, match=f"{arg} must be float8_e4m3fn or float8_e4m3fnuz"):
        _call(op_name, **{arg: torch.float16})
    if arg == "fp8_dtype":
        with pytest.raises(RuntimeError, match="fp8_dtype must be .*, got torch.int8"):
            _call(op_name, **{arg: torch.int8})


@pytest.mark.parametrize("op_name", _ops_with("column_major_scales") + [n for n in OP_NAMES if n.endswith("_packed")])
def test_bad_group(op_name):
    # The rule ops' group_size (0 also allowed) is checked in test_dynamic_quant.py.
    with pytest.raises(
        RuntimeError, match=r"the hidden size \(input.size\(-1\) = 96\) must be divisible by group_size = 64"
    ):
        _call(op_name, input=lambda x: torch.randn(4, 96, dtype=torch.bfloat16), **(
            {"residual": torch.randn(4, 96, dtype=torch.bfloat16)} if "residual" in op_name or "fused_add" in op_name else {}),
            **({"weight": torch.randn(96, dtype=torch.bfloat16)} if "rms_norm" in op_name else {}))  # fmt: skip
    with pytest.raises(RuntimeError, match="group_size must be 32, 64 or 128, got 48"):
        _call(op_name, group_size=48)
    if "tma_aligned_scales" in _arg_names(op_name):
        with pytest.raises(RuntimeError, match="tma_aligned_scales needs column_major_scales"):
            _call(op_name, tma_aligned_scales=True)
    if "column_major_scales" not in _arg_names(op_name):
        return
    with pytest.raises(RuntimeError, match="column_major_scales needs a 2-D input"):
        three_d = torch.randn(2, 2, 128, dtype=torch.bfloat16)
        _call(op_name, input=three_d, column_major_scales=True,
              **({"residual": three_d.clone()} if "fused_add" in op_name else {}))  # fmt: skip


@pytest.mark.parametrize("op_name", _ops_with("weight"))
def test_mixed_devices_fail_at_trace_time(op_name):
    """The fake functions reject mixed devices, so a compile fails early and clearly."""
    kw = {"group_size": 64} if "group" in op_name else {}
    args = make_args(op_name, (4,), 128, torch.bfloat16, "cpu", **kw)
    names = [a.name for a in getattr(ops, op_name).default._schema.arguments]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake[0] = torch.empty(4, 128, dtype=torch.bfloat16, device="cuda")
        if "residual" in names:
            fake[names.index("residual")] = torch.empty(4, 128, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(RuntimeError, match="weight must be on the input's device"):
            getattr(ops, op_name)(*fake)
