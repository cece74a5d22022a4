"""The step profile sorts kernels and operators into the categories the GPU work is planned by, and its
rows account for the whole step."""
import torch

from benchmarks.bench_train_step import categorize, format_profile, profile_step


def test_kernel_names_fall_in_their_category():
    expect = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT": "matmul",
        "aten::addmm": "matmul",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": "attention",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32": "convolution",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>": "norms",
        "_masked_loss_fwd_kernel": "our kernels: loss",
        "_pool_bwd_kernel": "our kernels: pooling",
        "_ema_flat_kernel": "EMA",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimiser",
        "triton_per_fused_add_native_layer_norm_0": "compiled fusions (inductor)",
        "Memcpy HtoD (Pinned -> Device)": "data movement",
        "void at::native::index_elementwise_kernel<128, 4>": "data movement",
        "void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>": "elementwise and reductions",
        "some_unknown_kernel": "other",
    }
    assert {name: categorize(name) for name in expect} == expect


def test_profile_rows_add_up_to_the_step():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(256, 64)

    def step():
        torch.nn.functional.layer_norm(lin(x), (64,)).sum().backward()

    step()
    summary = profile_step(step, torch.device("cpu"))
    by_category = {r["category"]: r["ms"] for r in summary["rows"]}
    assert by_category.get("matmul", 0) > 0 and by_category.get("norms", 0) > 0
    total = sum(by_category.values())
    assert abs(total - summary["wall_ms"]) <= 0.05 * summary["wall_ms"] + 0.5  # the rows account for the step
    assert "| matmul |" in format_profile("linear", summary)
