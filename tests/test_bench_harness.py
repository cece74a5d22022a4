"""benchmarks.harness.measure: on CUDA, ``graph=True`` is Triton's CUDA-graph timing (device time) and the
default is ``do_bench`` (the time a caller sees); on CPU graph timing is refused by name. ``cold_copies`` and
``Cycling``: enough input copies, taken in turn, that a graph's calls read cold memory."""
from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import triton.testing

from benchmarks.harness import Cycling, cold_copies, measure, timings


def test_cuda_timing_picks_do_bench_or_the_graph_replay():
    calls = []

    def fake(name):
        def bench(fn, **kwargs):
            calls.append((name, kwargs["quantiles"]))
            return [1.0, 2.0, 3.0]
        return bench

    cuda = torch.device("cuda")
    with mock.patch.object(triton.testing, "do_bench", fake("do_bench")), \
            mock.patch.object(triton.testing, "do_bench_cudagraph", fake("cudagraph")):
        assert measure(lambda: None, cuda) == {"ms": 2.0, "ms_q25": 1.0, "ms_q75": 3.0}
        assert measure(lambda: None, cuda, graph=True) == {"ms": 2.0, "ms_q25": 1.0, "ms_q75": 3.0}
    assert calls == [("do_bench", [0.25, 0.5, 0.75]), ("cudagraph", [0.25, 0.5, 0.75])]
    assert timings(cuda) == (False, True) and timings(torch.device("cpu")) == (False,)


def test_graph_timing_on_cpu_is_refused():
    with pytest.raises(ValueError, match="CUDA"):
        measure(lambda: None, torch.device("cpu"), graph=True)


def test_cold_copies_stream_four_l2_caches_between_two_uses_of_one_copy():
    cuda, mb = torch.device("cuda"), 2**20
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(L2_cache_size=50 * mb)):
        assert cold_copies(39 * mb, cuda) == 7  # the loss at D 96: the 6 others read 234 MB >= 200 MB > 5 x 39
        assert cold_copies(200 * mb, cuda) == 1 and cold_copies(800 * mb, cuda) == 1  # one call streams enough
        assert cold_copies(1024, cuda) == 8 and cold_copies(1024, cuda, most=3) == 3
        assert cold_copies(39 * mb, cuda, factor=2) == 4
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device: SimpleNamespace()):
        assert cold_copies(39 * mb, cuda) == 7  # no L2 size reported: an H100's 50 MB assumed
    assert cold_copies(39 * mb, torch.device("cpu")) == 1


def test_cycling_takes_the_argument_sets_in_turn_and_restarts():
    seen = []
    run = Cycling(lambda a, b: seen.append((a, b)) or a, [(0, "x"), (1, "y"), (2, "z")])
    assert [run() for _ in range(4)] == [0, 1, 2, 0]
    run.restart()
    assert run() == 0 and seen[-1] == (0, "x")
    with pytest.raises(ValueError, match="argument set"):
        Cycling(print, [])
