"""IJEPAMaskCollator: I-JEPA's MaskCollator arguments and layout, whole blocks, its options and rules."""
import pytest
import torch

from hjepa_fast.peer_masks import IJEPAMaskCollator

IJEPA_CONFIG = dict(input_size=224, patch_size=16, enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2),
                    aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=10, allow_overlap=False)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(n):
    return [(torch.full((3, 4, 4), float(i)), i) for i in range(n)]


@pytest.mark.parametrize("compat", ["none", "ijepa"])
def test_layout_whole_blocks_and_disjoint_context(compat):
    col = IJEPAMaskCollator(**IJEPA_CONFIG, compat=compat)
    for _ in range(10):
        (images, labels), masks_enc, masks_pred = col(batch(8))
        assert images.shape == (8, 3, 4, 4) and labels.tolist() == list(range(8))
        assert len(masks_enc) == 1 and len(masks_pred) == 4
        k = masks_pred[0].shape[1]
        for m in masks_pred:
            assert m.shape == (8, k) and m.dtype == torch.int64
            rows, cols = m // 14, m % 14
            height, width = int(rows[0].max() - rows[0].min()) + 1, int(cols[0].max() - cols[0].min()) + 1
            assert height * width == k  # a whole rectangle
        targets = torch.cat(masks_pred, 1)
        for c, t in zip(masks_enc[0].tolist(), targets.tolist(), strict=True):
            assert not set(c) & set(t) and len(set(c)) > 10


@pytest.mark.parametrize("batch_size", [8, 128])
def test_ijepa_compat_coverage(batch_size):
    col = IJEPAMaskCollator(**IJEPA_CONFIG, compat="ijepa")
    covs = []
    for _ in range(1024 // batch_size):
        _, _, masks_pred = col(batch(batch_size))
        covered = torch.zeros(batch_size, 196, dtype=torch.bool).scatter_(1, torch.cat(masks_pred, 1), True)
        covs.append(covered.float().mean().item())
    assert abs(sum(covs) / len(covs) - 0.44) <= 0.02


def test_compat_trims_context_to_the_first_min_indices():
    col = IJEPAMaskCollator(**IJEPA_CONFIG, compat="ijepa")
    _, (enc,), _ = col(batch(16))
    assert (enc.diff(dim=1) > 0).all()  # a prefix of each row's sorted indices: no repeats
    ours = IJEPAMaskCollator(**IJEPA_CONFIG)
    _, (enc2,), _ = ours(batch(16))
    assert enc2.shape[1] >= enc.shape[1] - 40  # the mean count, not the minimum (loose: other draws)


def test_nenc_allow_overlap_and_relaxation():
    col = IJEPAMaskCollator(**{**IJEPA_CONFIG, "nenc": 3, "allow_overlap": True})
    _, masks_enc, masks_pred = col(batch(8))
    assert len(masks_enc) == 3
    overlap = [bool(set(c) & set(t)) for c, t in zip(masks_enc[0].tolist(), torch.cat(masks_pred, 1).tolist())]
    assert any(overlap)  # allow_overlap keeps targets in the context
    # a 4x4 grid, a whole-grid context block and 3x3 targets: even one target leaves 7 <= min_keep tokens,
    # so I-JEPA's rule drops every constraint and the context is the whole block, targets included
    tight = IJEPAMaskCollator(input_size=64, patch_size=16, enc_mask_scale=(1.0, 1.0), pred_mask_scale=(0.5, 0.5),
                              aspect_ratio=(1.0, 1.0), npred=4, min_keep=7)
    _, (enc,), (first, *_) = tight(batch(4))
    assert first.shape[1] == 9 and all(sorted(set(row)) == list(range(16)) for row in enc.tolist())
    # min_keep 6: the first target alone leaves 7 > 6 tokens, so the context honours at least that block
    looser = IJEPAMaskCollator(input_size=64, patch_size=16, enc_mask_scale=(1.0, 1.0), pred_mask_scale=(0.5, 0.5),
                               aspect_ratio=(1.0, 1.0), npred=4, min_keep=6)
    _, (enc,), (first, *_) = looser(batch(4))
    assert all(not set(c) & set(t) for c, t in zip(enc.tolist(), first.tolist()))


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="nenc and npred"):
        IJEPAMaskCollator(nenc=0)
    with pytest.raises(ValueError, match="compat"):
        IJEPAMaskCollator(compat="vjepa")
