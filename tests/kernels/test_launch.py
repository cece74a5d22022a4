"""The plain-Python launch arithmetic agrees with Triton's own helpers it replaces."""
import triton

from hjepa_fast.kernels.launch import cdiv, next_power_of_2


def test_next_power_of_2_matches_triton():
    for n in [*range(1, 70), 127, 128, 129, 1000, 4096, 4097, 2**20 + 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    assert next_power_of_2(0) == 1  # the callers' floor (Triton's helper returns 0 here)


def test_cdiv_matches_triton():
    for a in [0, 1, 5, 16, 17, 1000, 2**31 + 3]:
        for b in [1, 2, 3, 16, 4096]:
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
