"""Activation checkpointing changes memory, never the math; a missing DeepSpeed says how to install it."""
from __future__ import annotations

import sys

import pytest
import torch

from hjepa_fast.cli import main
from hjepa_fast.train.builders import build_mask_sampler, build_model
from hjepa_fast.train.parallelize import apply_activation_checkpointing
from hjepa_fast.train.trainer import train


def saved_bytes_and_grads(model, clips, masks):
    """Bytes autograd saves for backward during the forward (outside checkpointed blocks), the loss and
    the gradients."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(clips, masks, step=0)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return total, out.loss.detach(), grads


def test_checkpointing_keeps_loss_and_grads_and_saves_less(make_config):
    cfg = make_config("model.encoder_depths=[2,1,1]", "model.predictor_depths=[2,1,1]", "train.batch_size=4")
    clips = torch.randint(0, 256, (4, 16, 1, 24, 24), dtype=torch.uint8)
    masks = build_mask_sampler(cfg).sample(4, torch.Generator().manual_seed(0))
    plain, checkpointed = build_model(cfg), build_model(cfg)
    assert apply_activation_checkpointing(checkpointed, [True, True, True]) == 2 + 2 + 1 + 1 + 1 + 1
    bytes_plain, loss_plain, grads_plain = saved_bytes_and_grads(plain, clips, masks)
    bytes_ckpt, loss_ckpt, grads_ckpt = saved_bytes_and_grads(checkpointed, clips, masks)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys()
    for key in grads_plain:
        torch.testing.assert_close(grads_ckpt[key], grads_plain[key], rtol=0, atol=1e-7, msg=key)
    assert bytes_ckpt < 0.5 * bytes_plain, (bytes_ckpt, bytes_plain)
    # names unchanged: checkpoints load with checkpointing on or off
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()
    # per level: only level 1 checkpointed saves more than all, less than none
    level1 = build_model(cfg)
    apply_activation_checkpointing(level1, [True, False, False])
    assert bytes_ckpt < saved_bytes_and_grads(level1, clips, masks)[0] < bytes_plain


def test_training_with_checkpointing_gives_the_same_losses(make_config, tmp_path):
    runs = []
    for name, flags in (("plain", "[false,false,false]"), ("ckpt", "[true,false,true]")):
        cfg = make_config("train.steps=2", f"train.activation_checkpointing={flags}", f"train.out_dir={tmp_path}",
                          f"train.run_name={name}")
        runs.append([row["loss"] for row in train(cfg, progress=False)["losses"]])
    assert runs[0] == runs[1]


def test_missing_deepspeed_says_how_to_install_and_other_engines_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    from conftest import TINY

    common = ["train", "--no-progress", *TINY, "train.steps=1", f"train.out_dir={tmp_path}"]
    assert main([*common, "train.run_name=ds", "train.engine=deepspeed", "train.deepspeed=configs/ds_zero2.json"]) == 2
    err = capsys.readouterr().err
    assert "DeepSpeed" in err and "pip install" in err and "ddp, fsdp" in err
    assert main([*common, "train.run_name=ddp", "train.engine=ddp"]) == 0  # a process group of one
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()


def test_deepspeed_config_is_checked(make_config, tmp_path):
    pytest.importorskip("deepspeed")
    from hjepa_fast.config import ConfigError
    from hjepa_fast.train.deepspeed_engine import deepspeed_config
    from hjepa_fast.train.distributed import DistInfo

    cfg = make_config("train.engine=deepspeed", "train.deepspeed=configs/ds_zero3.json", "train.batch_size=8",
                      "train.grad_accumulation=2")
    conf = deepspeed_config(cfg, DistInfo(world=2))
    assert (conf["train_batch_size"], conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"],
            conf["gradient_clipping"]) == (8, 2, 2, 0.0)
    bad = tmp_path / "bf16.json"
    bad.write_text('{"bf16": {"enabled": true}, "zero_optimization": {"stage": 2}}')
    cfg.train.deepspeed = str(bad)
    with pytest.raises(ConfigError, match="precision=bf16"):
        deepspeed_config(cfg, DistInfo(world=2))
    with pytest.raises(ConfigError, match="split evenly"):
        deepspeed_config(make_config("train.engine=deepspeed", "train.deepspeed=configs/ds_zero2.json"),
                         DistInfo(world=3))
