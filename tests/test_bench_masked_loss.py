"""benchmarks.bench_masked_loss compares like with like: its I-JEPA-trainer baseline computes the same loss
and gradient as ``masked_jepa_loss`` on the un-gathered targets it is timed against."""
from __future__ import annotations

import torch

from benchmarks import bench_masked_loss as bench
from benchmarks.sweep_launch import loss_inputs
from hjepa_fast.kernels import masked_loss as ml


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


def test_cases_put_the_trainer_against_a_broadcast_target_after_the_first_shape():
    cases = bench.cases(torch.device("cpu"), quick=True)
    trainer = cases.pop(2)
    assert [c.op for c in cases] == ["l2", "ijepa"] * len(bench.QUICK_SHAPES["cpu"])
    assert all(c.shape[0] == c.shape[4] for c in cases)  # the recipe shapes: one target per row
    assert trainer.op == "ijepa trainer" and trainer.eager is bench.ijepa_trainer_loss
    assert trainer.shape[0] % trainer.shape[4] == 0 and trainer.shape[4] < trainer.shape[0]


def _inputs(B=2, M=5, N=9, D=8):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(B, M, D, generator=g).requires_grad_()
    return pred, torch.randn(B, N, D, generator=g), torch.rand(B, N, generator=g).argsort(1)[:, :M]


def test_a_failing_path_is_recorded_and_the_others_still_timed():
    pred, target, idx = _inputs()
    case = bench.Case("l2", (2, 5, 9, 8, 2), ml.masked_l2_loss_reference, ml.masked_l2_loss_reference)

    def broken(*args):
        raise RuntimeError("no kernel image")

    paths = {"eager": ml.masked_l2_loss_reference, "broken": broken, "again": ml.masked_l2_loss_reference}
    errors = []
    rows = bench.time_paths(case, paths, [(pred, target, idx)], torch.device("cpu"), 1.0, errors)
    assert [r["path"] for r in rows] == ["eager", "again"]
    assert len(errors) == 1 and "broken" in errors[0] and "no kernel image" in errors[0]
    assert [r["abs_err"] for r in rows] == [0.0, 0.0]
    assert rows[1]["speedup_vs_eager"] == rows[0]["ms"] / rows[1]["ms"]


def test_candidate_launch_settings_are_timed_beside_the_default_at_vit_b_width():
    seen = []

    def triton_path(pred, target, idx, launch=None):
        seen.append(launch)  # the launch settings the call was given (None: the default)
        return torch.zeros(())

    default = bench.default_setting()
    assert default == {"tile_elements": 2048, "warps": None, "tiles": 1, "stages": 1, "split_rows": False}
    cuda = torch.device("cuda")  # only names the device: nothing runs on it
    wide = bench.paths_of(bench.Case("l2", (2, 5, 9, 768, 2), None, triton_path), cuda)
    candidates = [s for s in bench.CANDIDATE_SETTINGS if s != default]
    assert list(wide) == ["eager", "compiled", "triton"] + [f"triton {bench.setting_label(s)}" for s in candidates]
    assert len(candidates) == len(bench.CANDIDATE_SETTINGS) - (default in bench.CANDIDATE_SETTINGS)
    pred, target, idx = _inputs(D=768)
    for name in list(wide)[2:]:
        wide[name](pred, target, idx)
    assert seen == [None] + [ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, **s) for s in candidates]
    narrow = bench.paths_of(bench.Case("l2", (2, 5, 9, 96, 2), None, triton_path), cuda)
    assert list(narrow) == ["eager", "compiled", "triton"]
    assert list(bench.paths_of(bench.Case("l2", (2, 5, 9, 768, 2), None, triton_path), torch.device("cpu"))) == [
        "eager", "compiled"]


def test_timed_calls_cycle_through_the_input_copies():
    """Each timed forward + backward takes the next copy of the inputs (on a GPU, cold memory for the graph
    rows); the loss value is checked on the first."""
    copies = [_inputs(), _inputs(), _inputs()]
    seen = []

    def loss(pred, target, idx):
        seen.append(next(i for i, c in enumerate(copies) if c[0] is pred))
        return ml.masked_l2_loss_reference(pred, target, idx)

    case = bench.Case("l2", (2, 5, 9, 8, 2), loss, loss)
    bench.time_paths(case, {"eager": loss}, copies, torch.device("cpu"), 1.0, [])
    assert seen[:2] == [0, 0] and len(seen) > 8  # the baseline's value and the path's, on the first copy
    assert seen[2:] == [i % 3 for i in range(len(seen) - 2)]  # then the timed calls, round-robin


def test_input_copies_are_seeded_and_need_the_prediction_gradient():
    case = bench.Case("l2", (2, 5, 9, 8, 2), None, None)
    (first,), (again,) = (bench.loss_inputs_copies(case, torch.float32, torch.device("cpu")) for _ in range(2))
    assert first[0].requires_grad and not first[1].requires_grad
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[2].shape == (2, 5) and all(len(set(row.tolist())) == 5 for row in first[2])
    assert torch.equal(first[2], first[2].sort(1).values)  # in increasing order, as mask generators give them


def test_sweep_inputs_in_order_or_not_draw_the_same_positions():
    shape, cpu = (3, 20, 40, 8, 3), torch.device("cpu")
    (*_, in_order), (*_, shuffled) = (loss_inputs(shape, torch.float32, cpu, torch.Generator().manual_seed(0), order)
                                      for order in (True, False))
    assert torch.equal(in_order, in_order.sort(1).values) and not torch.equal(shuffled, shuffled.sort(1).values)
    assert torch.equal(shuffled.sort(1).values, in_order)
