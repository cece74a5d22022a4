"""benchmarks.bench_masked_loss compares like with like: its I-JEPA-trainer baseline computes the same loss and
gradient as ``masked_jepa_loss`` on the un-gathered targets it is timed against; candidate launch settings reach
the kernel; inputs are seeded, in copies the timed calls take in turn."""
from __future__ import annotations

import torch

from benchmarks import bench_masked_loss as bench
from benchmarks.harness import default_setting, setting_text
from hjepa_fast.kernels import masked_loss as ml

CPU = torch.device("cpu")


def test_ijepa_trainer_baseline_equals_the_loss_it_is_timed_against():
    B, M, N, D, Bt = bench.IJEPA_TRAINER["quick"]
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(B, M, D, generator=g).requires_grad_()
    target = torch.randn(Bt, N, D, generator=g)
    idx = torch.rand(B, N, generator=g).argsort(1)[:, :M]
    want = ml.masked_jepa_loss_reference(pred, target, idx)
    got = bench.ijepa_trainer_loss(pred, target, idx)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(want, pred)[0])


def test_specs_put_the_trainer_against_a_broadcast_target_after_the_first_shape():
    specs = bench.specs(CPU, quick=True)
    op, trainer = specs.pop(2)
    assert [op for op, _ in specs] == ["l2", "ijepa"] * len(bench.QUICK_SHAPES["cpu"])
    assert all(shape[0] == shape[4] for _, shape in specs)  # the recipe shapes: one target per row
    assert op == "ijepa trainer" and trainer[0] % trainer[4] == 0 and trainer[4] < trainer[0]
    case = next(bench.setup((op, trainer), CPU))
    assert list(case.paths) == ["eager", "compiled"] and case.fields["target_batch"] == trainer[4]
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
    pred, target, idx = bench.loss_inputs((2, 5, 9, 768, 2), torch.float32, CPU, torch.Generator().manual_seed(0))
    for name in list(wide)[2:]:
        wide[name](pred, target, idx)
    assert seen == [None] + [ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, **s) for s in candidates]
    assert list(bench.paths_of("l2", 96, cuda)) == ["eager", "compiled", "triton"]
    assert list(bench.paths_of("l2", 768, CPU)) == ["eager", "compiled"]


def test_input_copies_are_seeded_and_need_the_prediction_gradient():
    (first,), (again,) = (bench.input_copies((2, 5, 9, 8, 2), torch.float32, CPU) for _ in range(2))
    assert first[0].requires_grad and not first[1].requires_grad
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[2].shape == (2, 5) and all(len(set(row.tolist())) == 5 for row in first[2])
    assert torch.equal(first[2], first[2].sort(1).values)  # in increasing order, as mask generators give them


def test_inputs_in_order_or_not_draw_the_same_positions():
    shape = (3, 20, 40, 8, 3)
    (*_, in_order), (*_, shuffled) = (bench.loss_inputs(shape, torch.float32, CPU, torch.Generator().manual_seed(0),
                                                        order) for order in (True, False))
    assert torch.equal(in_order, in_order.sort(1).values) and not torch.equal(shuffled, shuffled.sort(1).values)
    assert torch.equal(shuffled.sort(1).values, in_order)
