import torch, fusion_kernels
fusion_kernels.load(strict=True)
ops = torch.ops.fusion_kernels
w = torch.randn(128, dtype=torch.bfloat16)
for name, x in [("int32", torch.randn(4, 128).to(torch.int32)), ("noncontig", torch.randn(128, 4).to(torch.bfloat16).t())]:
    for op in ["rms_norm", "fused_add_rms_norm_dynamic_per_token_quant"]:
        print(name, op, flush=True)
        try:
            if op == "rms_norm":
                ops.rms_norm(x, w, 1e-6)
            else:
                ops.fused_add_rms_norm_dynamic_per_token_quant(x, torch.randn(4, 128, dtype=torch.bfloat16), w, 1e-6, torch.float8_e4m3fn, None)
        except RuntimeError as e:
            print("  raised:", str(e)[:100], flush=True)
