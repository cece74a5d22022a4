"""VJEPAMaskCollator: V-JEPA's multiblock-3d layout and rules (one box size per batch, union of boxes as
targets, the complement within the kept steps as context), our equal-count rows or V-JEPA's trimming."""
import pytest
import torch

from hjepa_fast.peer_masks import VJEPAMaskCollator

SHORT = dict(spatial_scale=(0.15, 0.15), temporal_scale=(1.0, 1.0), aspect_ratio=(0.75, 1.5), num_blocks=8)
LONG = dict(spatial_scale=(0.7, 0.7), temporal_scale=(1.0, 1.0), aspect_ratio=(0.75, 1.5), num_blocks=2)
GEOMETRY = dict(crop_size=64, num_frames=8, patch_size=16, tubelet_size=2)  # grid 4 x 4 x 4


def _batch(n):
    return [torch.full((2,), float(i)) for i in range(n)]


def test_layout_and_disjoint_rows():
    batch, enc, pred = VJEPAMaskCollator([SHORT, LONG], **GEOMETRY)(_batch(6))
    assert batch.shape == (6, 2) and len(enc) == len(pred) == 2
    for e, p in zip(enc, pred):
        assert e.dtype == p.dtype == torch.int64 and e.shape[0] == p.shape[0] == 6
        assert 0 <= int(e.min()) and int(max(e.max(), p.max())) < 64
        for row_e, row_p in zip(e.tolist(), p.tolist()):
            assert not set(row_e) & set(row_p)


def test_one_block_is_a_box_of_the_drawn_size():
    cfg = dict(spatial_scale=(0.25, 0.25), temporal_scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0), num_blocks=1)
    _, enc, pred = VJEPAMaskCollator([cfg], crop_size=128, num_frames=8, patch_size=16, tubelet_size=2)(_batch(5))
    t, h, w = 2, 4, 4  # int(4 * 0.5); n = int(64 * 0.25) = 16 -> 4 x 4
    for row in pred[0]:
        T, Y, X = row // 64, row // 8 % 8, row % 8
        assert row.numel() == t * h * w
        assert (T.max() - T.min() + 1, Y.max() - Y.min() + 1, X.max() - X.min() + 1) == (t, h, w)
    assert enc[0].shape[1] == 4 * 64 - t * h * w  # the complement, nothing thinned


def test_context_stays_within_the_kept_steps():
    cfg = {**SHORT, "num_blocks": 1, "max_temporal_keep": 0.5}
    _, enc, pred = VJEPAMaskCollator([cfg], **GEOMETRY)(_batch(4))
    assert int((enc[0] // 16).max()) < 2  # steps 0-1 of 4
    assert all(set(range(32, 64)) <= set(row) for row in pred[0].tolist())  # later steps are targets


def test_vjepa_trimming_against_ours():
    ours = VJEPAMaskCollator([SHORT], **GEOMETRY, seed=3)
    peer = VJEPAMaskCollator([SHORT], **GEOMETRY, seed=3, compat="vjepa")
    _, enc_o, pred_o = ours(_batch(16))
    _, enc_p, pred_p = peer(_batch(16))
    # the same boxes: V-JEPA keeps the first `min` sorted indices of each row, ours the batch's mean count
    assert enc_p[0].shape[1] <= enc_o[0].shape[1] and pred_p[0].shape[1] <= pred_o[0].shape[1]
    for row in pred_p[0]:
        assert torch.equal(row, row.sort().values)


def test_masks_follow_seed_and_call_count():
    a, b = VJEPAMaskCollator([SHORT], **GEOMETRY, seed=1), VJEPAMaskCollator([SHORT], **GEOMETRY, seed=1)
    first = a(_batch(4))[2][0]
    assert torch.equal(first, b(_batch(4))[2][0])
    assert not torch.equal(first, a(_batch(4))[2][0])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="lacks"):
        VJEPAMaskCollator([{"spatial_scale": (0.1, 0.2)}], **GEOMETRY)
    with pytest.raises(ValueError, match="compat"):
        VJEPAMaskCollator([SHORT], **GEOMETRY, compat="ijepa")
