"""benchmarks.bench_masked_loss: both losses at every shape of ``cases.yaml``; candidate launch settings reach the
kernel; inputs are seeded, in copies the timed calls take in turn."""
from __future__ import annotations

import torch

from benchmarks import bench_masked_loss as bench
from benchmarks.harness import default_setting, setting_text
from hjepa_fast.kernels import masked_loss as ml

CPU = torch.device("cpu")


def test_specs_time_both_losses_at_each_shape():
    specs = bench.specs(CPU, quick=True)
    assert specs == [(op, tuple(shape)) for shape in bench.CASES["masked_loss"]["quick_shapes"]["cpu"]
                     for op in ("l2", "ijepa")]
    case = next(bench.setup(specs[1], CPU))
    assert list(case.paths) == ["eager", "compiled"] and case.fields["op"] == "ijepa"
    assert case.nbytes["frac_copy_autograd"] > case.nbytes["frac_copy"] > 0


def test_candidate_launch_settings_are_timed_beside_the_default_at_vit_b_width(monkeypatch):
    seen = []

    def triton_path(pred, target, idx, launch=None):
        seen.append(launch)  # the launch settings the call was given (None: the default)
        return torch.zeros(())

    monkeypatch.setitem(bench.OPS, "l2", (bench.OPS["l2"][0], triton_path))
    default = default_setting(ml.masked_loss_launch, bench.CANDIDATE_SETTINGS[0])
    assert default == {"tile_elements": 2048, "warps": None, "tiles": 1, "stages": 1, "split_rows": False}
    cuda = torch.device("cuda")  # only names the device: nothing runs on it
    wide = bench.paths_of("l2", 768, cuda)
    candidates = [s for s in bench.CANDIDATE_SETTINGS if s != default]
    assert list(wide) == ["eager", "compiled", "triton"] + [f"triton {setting_text(s, default)}" for s in candidates]
    assert "triton tiles=8 stages=3 tile_elements=1024 warps=2" not in wide  # keywords in the setting's order
    assert "triton tile_elements=1024 warps=2 tiles=8 stages=3" in wide
    pred, target, idx = bench.loss_inputs((2, 5, 9, 768), torch.float32, CPU, torch.Generator().manual_seed(0))
    for name in list(wide)[2:]:
        wide[name](pred, target, idx)
    assert seen == [None] + [ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, **s) for s in candidates]
    assert list(bench.paths_of("l2", 96, cuda)) == ["eager", "compiled", "triton"]
    assert list(bench.paths_of("l2", 768, CPU)) == ["eager", "compiled"]


def test_input_copies_are_seeded_and_need_the_prediction_gradient():
    (first,), (again,) = (bench.input_copies((2, 5, 9, 8), torch.float32, CPU) for _ in range(2))
    assert first[0].requires_grad and not first[1].requires_grad
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[2].shape == (2, 5) and all(len(set(row.tolist())) == 5 for row in first[2])
    assert torch.equal(first[2], first[2].sort(1).values)  # in increasing order, as mask generators give them


def test_inputs_in_order_or_not_draw_the_same_positions():
    shape = (3, 20, 40, 8)
    (*_, in_order), (*_, shuffled) = (bench.loss_inputs(shape, torch.float32, CPU, torch.Generator().manual_seed(0),
                                                        order) for order in (True, False))
    assert torch.equal(in_order, in_order.sort(1).values) and not torch.equal(shuffled, shuffled.sort(1).values)
    assert torch.equal(shuffled.sort(1).values, in_order)
