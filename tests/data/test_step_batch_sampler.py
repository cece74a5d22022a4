"""StepBatchSampler: batches are a pure function of the step, so resuming reproduces a run exactly."""

from __future__ import annotations

import itertools

import pytest
import torch

from hjepa_fast.data import MovingDigits, StepBatchSampler


def test_batches_carry_their_step() -> None:
    batches = list(StepBatchSampler(10, 4, seed=0, start_step=3, total_steps=3))
    assert [[key.step for key in b] for b in batches] == [[3] * 4, [4] * 4, [5] * 4]
    assert len(StepBatchSampler(10, 4, seed=0, start_step=3, total_steps=3)) == 3
    assert list(StepBatchSampler(10, 4, seed=0, start_step=3, total_steps=0)) == []


@pytest.mark.parametrize("batch_size", [3, 4, 25])  # 10 % 3 != 0 straddles epochs; 25 > dataset spans 3
def test_every_index_once_per_epoch(batch_size: int) -> None:
    n, epochs = 10, 6
    flat = [
        i for b in StepBatchSampler(n, batch_size, seed=1, total_steps=n * epochs // batch_size) for i, *_ in b
    ]
    for e in range(len(flat) // n):
        assert sorted(flat[e * n : (e + 1) * n]) == list(range(n))
    # Epochs are reshuffled, not replayed in one fixed order.
    assert len({tuple(flat[e * n : (e + 1) * n]) for e in range(len(flat) // n)}) > 1


@pytest.mark.parametrize("start", [1, 3, 7])  # step 3 covers positions 9..11: across the epoch-0/1 boundary
def test_resume_reproduces_uninterrupted_run(start: int) -> None:
    full = list(StepBatchSampler(10, 3, seed=7, total_steps=12))
    # total_steps counts the steps still to run, as a trainer resuming at `start` of 12 passes it.
    resumed = list(StepBatchSampler(10, 3, seed=7, start_step=start, total_steps=12 - start))
    assert resumed == full[start:]


def test_batch_straddling_epochs_reads_both_permutations() -> None:
    sampler = StepBatchSampler(10, 3, seed=7)
    first, second = sampler.permutation(0).tolist(), sampler.permutation(1).tolist()
    assert first != second
    assert [key.index for key in sampler.batch(3)] == [first[9], second[0], second[1]]  # positions 9, 10, 11


def test_infinite_and_seeded() -> None:
    infinite = StepBatchSampler(10, 3, seed=2)
    assert list(itertools.islice(infinite, 5)) == list(StepBatchSampler(10, 3, seed=2, total_steps=5))
    with pytest.raises(TypeError):
        len(infinite)
    assert list(StepBatchSampler(10, 3, seed=3, total_steps=5)) != list(
        StepBatchSampler(10, 3, seed=2, total_steps=5)
    )
    # The documented permutation rule, so another tool can recompute a run's order.
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 100_003 + 0))[:3].tolist()
    assert [key.index for key in next(iter(infinite))] == expected


def test_bad_arguments_refused() -> None:
    for kwargs in [
        {"dataset_len": 0, "batch_size": 1},
        {"dataset_len": 5, "batch_size": 0},
        {"dataset_len": 5, "batch_size": 1, "start_step": -1},
        {"dataset_len": 5, "batch_size": 1, "total_steps": -1},
        {"dataset_len": 5, "batch_size": 1, "seed": -1},
        {"dataset_len": 5, "batch_size": 1, "clips_per_video": 0},
    ]:
        with pytest.raises(ValueError):
            StepBatchSampler(**{"seed": 0, **kwargs})


def test_keys_carry_their_slot_in_the_global_batch() -> None:
    batch = StepBatchSampler(10, 4, seed=0).batch(5)
    assert [key.slot for key in batch] == [0, 1, 2, 3]
    assert {(key.part, key.parts) for key in batch} == {(0, 1)}


@pytest.mark.parametrize("batch_size", [4, 7])  # 7: a video's parts straddle two batches
def test_clips_per_video_visits_each_video_in_consecutive_parts(batch_size: int) -> None:
    """k = 3 clips per video: every 3 positions read one video, parts 0, 1, 2; every video once per epoch."""
    n, k = 5, 3
    sampler = StepBatchSampler(n, batch_size, seed=4, clips_per_video=k, total_steps=n * k * 2 // batch_size + 1)
    keys = [key for b in sampler for key in b]
    visits = [keys[v * k : (v + 1) * k] for v in range(len(keys) // k)]
    assert all([key.part for key in visit] == [0, 1, 2] and len({key.index for key in visit}) == 1
               for visit in visits)
    assert all(key.parts == k for key in keys)
    videos = [visit[0].index for visit in visits]
    assert sorted(videos[:n]) == sorted(videos[n : 2 * n]) == list(range(n))
    assert videos[:n] == StepBatchSampler(n, 1, seed=4).permutation(0).tolist()  # the k = 1 order, per visit


def test_dataloader_with_workers_matches_single_process() -> None:
    """The whole pipeline: sampler keys -> data set items -> default collate, same with 2 workers."""
    ds = MovingDigits("val", frames=4, size=16, digit_size=8, num_clips=20)

    def run(workers: int) -> list[dict]:
        sampler = StepBatchSampler(len(ds), 6, seed=0, start_step=2, total_steps=3)
        return list(torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers))

    single, multi = run(0), run(2)
    assert single[0]["clip"].shape == (6, 4, 1, 16, 16)
    assert single[0]["step"].tolist() == [2] * 6
    assert set(single[0]["labels"]) == {"digit", "direction", "speed"}
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["labels"]["digit"], b["labels"]["digit"])
