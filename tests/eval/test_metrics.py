"""Each evaluation metric on cases with a known answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_fast.eval.probe import linear_probe
from hjepa_fast.metrics import collapse_report, rankme
from hjepa_fast.train.builders import build_model
from hjepa_fast.train.trainer import CollapseMonitor


def test_probe_reads_separable_labels_and_not_random_ones():
    rng = np.random.default_rng(0)
    y = rng.integers(4, size=800)
    x = rng.normal(size=(800, 16)) + 4.0 * np.eye(16)[y]  # class k shifted along axis k
    assert linear_probe(x[:600], y[:600], x[600:], y[600:]) > 0.95
    noise = rng.normal(size=(800, 16))
    assert linear_probe(noise[:600], y[:600], noise[600:], y[600:]) < 0.45  # chance is 0.25


def test_rankme_of_full_rank_rank_one_and_constant_features():
    g = torch.Generator().manual_seed(0)
    assert rankme(torch.randn(4000, 16, generator=g)) > 15.0
    u, v = torch.randn(500, 1, generator=g), torch.randn(1, 16, generator=g)
    assert rankme(u @ v + 3.0) == pytest.approx(1.0, abs=1e-3)  # a shared offset does not add a direction
    assert rankme(torch.ones(100, 16)) == 0.0


def test_collapse_report_flags_a_constant_encoder_only(make_config):
    model = build_model(make_config())
    clips = torch.randint(0, 256, (8, 16, 1, 24, 24), dtype=torch.uint8)
    assert not collapse_report(model.features(clips)[0])["collapsed"]
    for enc in model.target_encoders:  # every token becomes the norm's bias: a constant encoder
        torch.nn.init.zeros_(enc.norm.weight)
        torch.nn.init.ones_(enc.norm.bias)
    for level, features in enumerate(model.features(clips)):
        report = collapse_report(features)
        assert report["collapsed"] and report["spread"] == 0.0 and report["rankme"] == 0.0, (level, report)


def test_trainer_monitor_reads_the_target_features_on_armed_steps_only(make_config):
    model = build_model(make_config())
    monitor = CollapseMonitor(model)
    clips = torch.randint(0, 256, (8, 16, 1, 24, 24), dtype=torch.uint8)
    model.encode_targets(clips)
    assert monitor.rows == [[]] * model.levels  # not armed: nothing kept
    monitor.armed = True
    model.encode_targets(clips)
    more = torch.randint(0, 256, (8, 16, 1, 24, 24), dtype=torch.uint8)
    model.encode_targets(more)  # a second armed step: its rows join the first's
    monitor.armed = False
    stats = monitor.stats()  # [spread, rankme] per level
    expected = [collapse_report(torch.cat([a, b])) for a, b in zip(model.features(clips), model.features(more))]
    assert stats[0::2].tolist() == pytest.approx([e["spread"] for e in expected], rel=1e-4)
    assert stats[1::2].tolist() == pytest.approx([e["rankme"] for e in expected], rel=1e-4)
    assert max(stats[1::2].tolist()) > 8  # more rows than one batch of 8 can have rank
    assert monitor.rows == [[]] * model.levels  # stats() starts the next window empty
    monitor.close()


@pytest.mark.parametrize("width, rows_per_step, window, steps", [(64, 16, 25, 16), (64, 16, 10, 10), (768, 4096, 25, 1),
                                                                 (64, 48, 25, 6)])
def test_the_monitor_keeps_enough_steps_for_four_rows_per_dimension(width, rows_per_step, window, steps):
    assert CollapseMonitor.armed_steps(width, rows_per_step, window) == steps
