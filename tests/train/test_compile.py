"""train.compile=blocks: every block compiled in place, few graphs shared by all blocks, the same loss and
gradients as eager; the fused optimiser only where it can run."""
import pytest
import torch
from torch._dynamo.utils import counters

from hjepa_fast.config import ConfigError, load_config
from hjepa_fast.train.builders import build_mask_sampler, build_model, build_optimizer
from hjepa_fast.train.compile import apply_compile, compiled_blocks

# three widths, a cross-attending predictor, stochastic depth on: the shapes that multiply graphs
OVERRIDES = ["model.encoder_dims=[32,24,16]", "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,8]",
             "model.predictor_heads=[2,2,2]", "model.encoder_depths=[4,2,2]", "model.drop_path=0.2",
             "train.batch_size=3", "masks.strategies=[multiblock,multiblock,multiblock]"]


def _batch(cfg, step):
    g = torch.Generator().manual_seed(step)
    masks = build_mask_sampler(cfg).sample(cfg.train.batch_size, g)
    m = cfg.model
    clips = torch.randint(0, 256, (cfg.train.batch_size, cfg.data.frames, m.in_chans, m.img_size, m.img_size),
                          dtype=torch.uint8, generator=g)
    return clips, masks


def _loss_and_grads(model, clips, masks):
    torch.manual_seed(0)  # the same stochastic-depth draws on both paths
    out = model(clips, masks)
    grads = torch.autograd.grad(out.loss, [p for p in model.online_parameters() if p.requires_grad],
                                allow_unused=True)
    return out.loss.detach(), grads


def test_compiled_blocks_match_eager_and_share_graphs():
    cfg = load_config("configs/tiny_cpu.yaml", OVERRIDES)
    eager, compiled = build_model(cfg).train(), build_model(cfg).train()
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    counters.clear()
    n = apply_compile(compiled, "blocks", backend="aot_eager")
    assert n == len(compiled_blocks(compiled)) > 10
    assert list(compiled.state_dict()) == keys  # checkpoints are the same with compile on or off
    graphs = []
    for step in range(3):  # new masks, new token counts each step
        clips, masks = _batch(cfg, step)
        want_loss, want_grads = _loss_and_grads(eager, clips, masks)
        got_loss, got_grads = _loss_and_grads(compiled, clips, masks)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-6)
        for got, want in zip(got_grads, want_grads):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    # one graph per distinct block kind, compiled in the first step; later steps' token counts reuse them
    assert 0 < graphs[0] <= 16 and graphs[2] == graphs[1], graphs
    torch._dynamo.reset()


def test_compile_setting_is_checked():
    with pytest.raises(ConfigError, match="train.compile"):
        load_config("configs/tiny_cpu.yaml", ["train.compile=model"])
    with pytest.raises(ValueError, match="unknown train.compile"):
        apply_compile(torch.nn.Linear(2, 2), "everything")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_optimizer_on_one_supported_device_under_single_or_ddp(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = build_model(load_config("configs/tiny_cpu.yaml")).to(device)
    fused = {overrides: build_optimizer(model, load_config("configs/tiny_cpu.yaml", list(overrides))).defaults.get("fused")
             for overrides in [(), ("train.engine=ddp",), ("train.engine=fsdp",), ("train.fused_optimizer=false",)]}
    assert fused == {(): True, ("train.engine=ddp",): True, ("train.engine=fsdp",): None,
                     ("train.fused_optimizer=false",): None}


def test_fused_adamw_takes_the_steps_of_the_per_tensor_loop():
    # the fused CPU step must not change what a run trains: same updates as torch's reference loop
    torch.manual_seed(0)
    params = [torch.randn(7, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    runs = []
    for kwargs in ({"foreach": False}, {"fused": True}):
        copies = [p.clone().requires_grad_() for p in params]
        opt = torch.optim.AdamW(copies, lr=1e-2, weight_decay=0.05, **kwargs)
        for step in range(5):
            for i, p in enumerate(copies):
                p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * (step + 1 + i))
            opt.step()
        runs.append(copies)
    for ours, ref in zip(*runs):
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)


def test_training_with_compiled_blocks_resumes_from_an_eager_checkpoint(make_config, tmp_path, monkeypatch):
    from hjepa_fast.train import trainer

    compiled: list[int] = []

    def compile_cheaply(model, mode):  # the trainer's call, on Dynamo's codegen-free backend
        compiled.append(apply_compile(model, mode, backend="aot_eager"))

    monkeypatch.setattr(trainer, "apply_compile", compile_cheaply)
    eager = make_config("train.steps=2", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer.train(eager, run_dir=run_dir, progress=False)
    assert compiled == [0]
    more = make_config("train.steps=4", "train.batch_size=4", "train.log_every=1", "train.compile=blocks")
    torch._dynamo.reset()
    result = trainer.train(more, run_dir=run_dir, resume=True, progress=False)
    torch._dynamo.reset()
    assert compiled[1] > 0 and result["step"] == 4
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result["losses"])
