"""benchmarks.harness.measure: on CUDA, ``graph=True`` is Triton's CUDA-graph timing (device time) and the
default is ``do_bench`` (the time a caller sees); on CPU graph timing is refused by name."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
import triton.testing

from benchmarks.harness import measure, timings


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
