"""Every kernel launch the public functions make on CUDA compiles for a GPU on this CPU-only machine
(``tests/cuda_compile.py``: Triton's compiler and its wheel's ptxas), at the recipe's shapes and with sizes
of 1, without register spills at the default launch settings (the loss kernel also software-pipelined, its
loads then asynchronous copies into shared memory). The interpreter the other kernel tests use
never runs the compiler: a kernel can pass them all and still fail to build for a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cuda_compile as cc
import pytest
import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[2]


def _compile_all(tmp_path: Path, arch: int) -> list[dict]:
    """``python -m tests.cuda_compile`` in a process of its own: without the interpreter this one runs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.cuda_compile", "--arch", str(arch), "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rows = json.loads((tmp_path / "cuda_compile.json").read_text())["rows"]
    assert done.returncode == 0, [r for r in rows if "error" in r] or done.stderr[-2000:]
    return rows


@pytest.mark.parametrize("arch", [90, 80], ids=["hopper", "ampere"])  # H100/H200, and the A100 recipe's GPUs
def test_every_launch_compiles_without_spills(tmp_path, arch):
    rows = _compile_all(tmp_path, arch)
    assert {r["launch"] for r in rows} == set(cc.all_launches())
    if "registers" not in rows[0]:
        pytest.skip("the Triton wheel ships no ptxas here")
    assert all(r["spill_bytes"] == 0 and 0 < r["registers"] <= 255 for r in rows), rows
    assert all(r["shared_bytes"] <= 96 * 1024 for r in rows), rows  # well within A100 (164 KB) and H100 (227 KB)
    by_name = {r["launch"]: r for r in rows}  # the pipelined loss loads through cp.async, the default does not
    assert all(by_name[f"masked_loss pipelined {kind}"]["async_copies"] > 0 for kind in ("l2", "ijepa", "vjepa p1.5"))
    assert by_name["masked_loss l2"]["async_copies"] == 0
    # the streaming kernels read 16 bytes a thread at the recipe's widths (contiguous rows, aligned)
    assert all(by_name[name]["vector_loads"] > 0 for name in ("masked_loss l2", "masked_loss backward scale",
                                                              "temporal_pool forward", "ema 3 levels update"))


def test_sizes_of_one_are_compiled_as_constants():
    """What Triton's runtime does with an integer argument equal to 1, and so what the compile check sees."""
    launches = cc.all_launches()
    signature, constants, _ = cc.specialise(launches["masked_loss ones l2"])
    assert signature["R"] == signature["M"] == signature["BT"] == "constexpr" and constants["R"] == 1
    assert signature["pred_ptr"] == "*bf16" and signature["N"] == "i32"
    signature, _, attrs = cc.specialise(launches["masked_loss l2"])
    assert signature["s_pd"] == "constexpr"  # unit stride: contiguous rows
    assert signature["D"] == "i32" and [["tt.divisibility", 16]] in attrs.values()


def _divide(x_ptr, n, denom, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, x / denom.to(tl.float32), mask=offs < n)


def test_the_check_catches_what_only_a_gpu_build_sees():
    """``.to()`` on an integer argument: fine for 3, a compile error for 1 (triton#2939): the class of bug
    the loss kernel had, invisible to the interpreter."""
    kernel, x = triton.runtime.JITFunction(_divide), torch.zeros(16)
    cc.compile_launch(cc.Launch(kernel, {"x_ptr": x, "n": 5, "denom": 3, "BLOCK": 16}, 1))
    with pytest.raises(triton.CompilationError):
        cc.compile_launch(cc.Launch(kernel, {"x_ptr": x, "n": 5, "denom": 1, "BLOCK": 16}, 1))


def test_programs_per_sm_follow_the_first_limit_reached():
    assert cc.blocks_per_sm(88, 2, 16) == 11  # registers: 88 -> 88 per thread, 5,632 a program, 65,536 an SM
    assert cc.blocks_per_sm(81, 2, 16) == 11  # allocated 8 at a time: 81 counts as 88
    assert cc.blocks_per_sm(80, 1, 0) == 25
    assert cc.blocks_per_sm(16, 1, 0) == 32  # resident programs
    assert cc.blocks_per_sm(32, 16, 0) == 4  # threads
    assert cc.blocks_per_sm(32, 1, 100 * 1024) == 2 and cc.blocks_per_sm(32, 1, 100 * 1024, arch=80) == 1  # shared
