"""The Triton kernels compiled for a CUDA GPU on a machine without one (the CPU tests' interpreter never runs the
compiler): each launch the public functions make on CUDA is recorded (the kernel replaced by a recorder, the CUDA
launch settings forced, CPU tensors standing in), specialised as Triton's runtime would (an integer argument equal
to 1 becomes a constant, pointers and integers divisible by 16 carry that hint) and compiled with Triton's compiler
and the ptxas its wheel ships, which reports registers per thread, spills and shared memory.

A helper of the default tests (tests/kernels/test_cuda_compile.py) and a tool: from the repository root,
``python -m tests.cuda_compile [--arch 90] [--settings] [--out DIR]`` writes ``cuda_compile.json``: every kernel
variant at its default CUDA launch setting, at the recipe's shapes and with sizes of 1; ``--settings`` adds the loss
kernel at D 768 under each setting the sweep times (``benchmarks.sweep_launch``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import NamedTuple
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.harness import cli, setting_text
from benchmarks.sweep_launch import MASKED_LOSS_SETTINGS
from hjepa_fast.kernels import ema, masked_loss, temporal_pool

_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int64: "*i64",
                  torch.int32: "*i32", torch.uint8: "*u8", torch.bool: "*i1"}
CUDA = torch.device("cuda")


class Launch(NamedTuple):
    """One recorded kernel launch: the ``@triton.jit`` function, its arguments by name and its warps."""

    kernel: triton.runtime.JITFunction
    args: dict[str, object]
    num_warps: int


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, kernel, launches: list[Launch]):
        # the compilable form (under TRITON_INTERPRET=1 ``triton.jit`` makes interpreted kernels)
        jit = triton.runtime.JITFunction
        self.kernel, self.launches = kernel if isinstance(kernel, jit) else jit(kernel.fn), launches

    def __getitem__(self, grid):
        def record(*args, num_warps: int = 4, **kwargs):
            self.launches.append(Launch(self.kernel, dict(zip(self.kernel.arg_names, args)) | kwargs, num_warps))
        return record


@contextlib.contextmanager
def recording(module, kernel_names: list[str]) -> Iterator[list[Launch]]:
    """Within the block, launches of ``module``'s kernels are recorded instead of run, with the CUDA launch settings
    whatever the tensors' device (the module's launch-settings function called for a CUDA device)."""
    launches: list[Launch] = []
    with contextlib.ExitStack() as stack:
        for name in kernel_names:
            stack.enter_context(mock.patch.object(module, name, _Recorder(getattr(module, name), launches)))
        for name in ("masked_loss_launch", "temporal_pool_launch", "ema_launch"):
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, _on_cuda(getattr(module, name))))
        yield launches


def _on_cuda(config: Callable) -> Callable:
    """``config`` with every device argument replaced by a CUDA device."""
    def cuda_config(*args, **kwargs):
        args = tuple(CUDA if isinstance(a, torch.device) else a for a in args)
        return config(*args, **{k: CUDA if isinstance(v, torch.device) else v for k, v in kwargs.items()})
    return cuda_config


def specialise(launch: Launch) -> tuple[dict[str, str], dict[str, object], dict[tuple[int], list]]:
    """Triton's runtime specialisation of a recorded launch: (signature, constants, attributes)."""
    signature, constants, attrs = {}, {}, {}
    for i, param in enumerate(launch.kernel.params):
        value = launch.args[param.name]
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = _POINTER_TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{param.name}: cannot specialise a {type(value).__name__}")
    return signature, constants, attrs


def compile_launch(launch: Launch, arch: int = 90) -> triton.compiler.CompiledKernel:
    """PTX and cubin of ``launch`` for ``sm_<arch>``; raises ``CompilationError`` where a GPU build would.
    Needs a process without ``TRITON_INTERPRET=1`` for kernels that call other ``@triton.jit`` functions."""
    signature, constants, attrs = specialise(launch)
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})


@functools.cache
def _ptxas() -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.access(path, os.X_OK) else None


# per SM: registers, threads, resident blocks, shared memory in bytes (CUDA occupancy tables)
_SM_LIMITS = {90: (65536, 2048, 32, 228 * 1024), 80: (65536, 2048, 32, 164 * 1024)}


def blocks_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int = 90) -> int:
    """Programs resident on one SM (theoretical occupancy; registers are allocated 8 per thread at a time)."""
    regs, threads, blocks, smem = _SM_LIMITS[arch]
    per_block = -(-registers // 8) * 8 * 32 * num_warps
    return min(blocks, regs // per_block, threads // (32 * num_warps), smem // max(shared_bytes, 1))


def resources(compiled: triton.compiler.CompiledKernel, arch: int = 90) -> dict[str, int]:
    """Registers per thread, spill bytes (stores + loads), static shared memory, asynchronous copies, vector
    loads from global memory and programs per SM, as ``ptxas -v`` reports them for the compiled PTX (empty
    without the wheel's ptxas)."""
    ptxas = _ptxas()
    if ptxas is None:
        return {}
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", ptx, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    numbers = {key: re.search(pattern, log) for key, pattern in
               {"registers": r"Used (\d+) registers", "spill_stores": r"(\d+) bytes spill stores",
                "spill_loads": r"(\d+) bytes spill loads"}.items()}
    out = {key: int(m.group(1)) for key, m in numbers.items() if m}
    out["spill_bytes"] = out.pop("spill_stores", 0) + out.pop("spill_loads", 0)
    out["shared_bytes"] = compiled.metadata.shared
    out["async_copies"] = len(re.findall(r"\bcp\.async\.c[ag]\b", compiled.asm["ptx"]))  # software-pipelined loads
    out["vector_loads"] = len(re.findall(r"\bld\.global(?:\.\w+)*\.v[24]\.", compiled.asm["ptx"]))  # 8-16 B a thread
    if arch in _SM_LIMITS and "registers" in out:
        out["blocks_per_sm"] = blocks_per_sm(out["registers"], compiled.metadata.num_warps, out["shared_bytes"], arch)
    return out


# launch settings of the loss kernel among the sweep's candidates, compiled by default
PIPELINED_LOSS = {"tile_elements": 1024, "warps": 2, "tiles": 8, "stages": 3, "split_rows": False}
SPLIT_LOSS = {"tile_elements": 1024, "warps": 1, "tiles": 4, "stages": 2, "split_rows": True}  # two chunks a row


def masked_loss_launches(B: int = 8, M: int = 147, N: int = 196, D: int = 768, Bt: int | None = None,
                         dtype: torch.dtype = torch.bfloat16, setting: dict | None = None) -> dict[str, Launch]:
    """Every loss the kernel computes, with and without idx, with and without the gradient; at the default
    CUDA launch, or at ``masked_loss_launch``'s for the keywords ``setting``."""
    pred = torch.randn(B, M, D, dtype=dtype, requires_grad=True)
    target, idx = torch.randn(Bt or B, N, D, dtype=dtype), torch.randint(0, N, (B, M))
    launch = None if setting is None else masked_loss.masked_loss_launch(pred.shape, dtype, CUDA, **setting)
    losses: dict[str, Callable[..., torch.Tensor]] = {
        "l2": masked_loss.masked_l2_loss_triton,
        "ijepa": masked_loss.masked_jepa_loss_triton,
        "smooth_l1 raw": functools.partial(masked_loss.masked_jepa_loss_triton, target_norm=None),
        **{f"vjepa p{p}": functools.partial(masked_loss.masked_jepa_loss_triton, kind="lp", p=p) for p in (1.0, 1.5)},
        "lp p2 raw": functools.partial(masked_loss.masked_jepa_loss_triton, kind="lp", p=2.0, target_norm=None),
    }
    out = {}
    with recording(masked_loss, ["_masked_loss_fwd_kernel"]) as launches:
        for name, fn in losses.items():
            fn(pred, target, idx, check_idx=False, launch=launch)
            out[name] = launches[-1]
        masked_loss.masked_l2_loss_triton(pred, target[:, :M], None, launch=launch)
        out["l2 no idx"] = launches[-1]
        masked_loss._masked_latent_loss(pred.detach(), target, idx, masked_loss._L2, False, 1.0, False, launch)
        out["l2 no grad"] = launches[-1]
    return out


def masked_loss_backward_launch(dtype: torch.dtype = torch.bfloat16, n: int = 8 * 147 * 768) -> dict[str, Launch]:
    """The eager backward's product of the forward's gradient and ``grad_output``."""
    with recording(masked_loss, ["_scale_kernel"]) as launches:
        masked_loss._scaled_gradient(torch.zeros(n, dtype=dtype), torch.tensor(2.0))
    return {"backward scale": launches[-1]}


def temporal_pool_launches(B: int = 2, T: int = 8, N: int = 196, H: int = 12, Dh: int = 64, window: int = 4,
                           dtype: torch.dtype = torch.bfloat16) -> dict[str, Launch]:
    """Forward and backward, without and with the ``visible`` mask."""
    out = {}
    with recording(temporal_pool, ["_pool_fwd_kernel", "_pool_bwd_kernel"]) as launches:
        for masked in (False, True):
            q = torch.randn(H, Dh, dtype=dtype, requires_grad=True)
            k, v = (torch.randn(B, T, N, H, Dh, dtype=dtype, requires_grad=True) for _ in range(2))
            visible = torch.rand(B, T, N) > 0.3 if masked else None
            pooled = temporal_pool.temporal_attention_pool_triton(q, k, v, window, visible)
            torch.autograd.grad(pooled, (q, k, v), torch.ones_like(pooled))
            tag = " masked" if masked else ""
            out[f"forward{tag}"], out[f"backward{tag}"] = launches[-2:]
    return out


def ema_launches(n: int = 1 << 20, levels: int = 3) -> dict[str, Launch]:
    """The packed multi-level update of one flat fp32 buffer."""
    target, source = torch.zeros(n), torch.ones(n)
    starts = torch.tensor([i * n // levels for i in range(levels)])
    with recording(ema, ["_ema_flat_kernel"]) as launches:
        ema.ema_flat_triton_(target, source, starts, torch.full((levels,), 0.01))
    return {"update": launches[-1]}


def all_launches() -> dict[str, Launch]:
    """The recipe's shapes, and the same kernels with sizes and strides of 1 (constants after specialisation);
    the loss kernel also software-pipelined (``PIPELINED_LOSS``) and with split rows (``SPLIT_LOSS``)."""
    widest = functools.partial(masked_loss_launches, B=2, M=5, N=7, D=masked_loss.MAX_D, dtype=torch.float32)
    pipelined = {"masked_loss pipelined": masked_loss_launches(setting=PIPELINED_LOSS),
                 "masked_loss pipelined ones": masked_loss_launches(1, 1, 3, 2, 1, setting=PIPELINED_LOSS),
                 "masked_loss pipelined widest fp32": {"l2": widest(setting=PIPELINED_LOSS)["l2"]}}
    split = {"masked_loss split": masked_loss_launches(setting=SPLIT_LOSS),
             "masked_loss split odd D": masked_loss_launches(B=2, M=5, N=7, D=300, dtype=torch.float32,
                                                             setting=SPLIT_LOSS)}
    groups = {"masked_loss": masked_loss_launches() | masked_loss_backward_launch(),
              "masked_loss ones": masked_loss_launches(1, 1, 3, 2, 1) | masked_loss_backward_launch(torch.float32, 1),
              **pipelined, **split,
              "masked_loss broadcast": {"l2": masked_loss_launches(B=8, Bt=2)["l2"]},
              "masked_loss D96": {"l2": masked_loss_launches(D=96)["l2"]},  # 16 rows a tile, the sweep's case
              "masked_loss widest fp32": {"l2": widest()["l2"]},
              "temporal_pool": temporal_pool_launches(),
              "temporal_pool ones": temporal_pool_launches(1, 2, 1, 1, 16, 2),
              "temporal_pool fp32 window 16 Dh 128": temporal_pool_launches(1, 16, 5, 2, 128, 16, torch.float32),
              "ema 3 levels": ema_launches(), "ema 1 level": ema_launches(levels=1)}
    return {f"{group} {name}": launch for group, launches in groups.items() for name, launch in launches.items()}


def main(argv: list[str] | None = None) -> int:
    parser = cli(__doc__)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 80: A100)")
    parser.add_argument("--settings", action="store_true", help="also the loss kernel under the sweep's settings")
    args = parser.parse_args(argv)
    rows = []
    launches = all_launches()
    if args.settings:  # the L2 loss at D 768 under each of the sweep's settings
        launches |= {f"masked_loss l2 D768 {setting_text(s)}": masked_loss_launches(setting=s)["l2"]
                     for s in MASKED_LOSS_SETTINGS}
    for name, launch in launches.items():
        try:
            compiled = compile_launch(launch, args.arch)
        except Exception as err:  # a row, not a crash: every launch gets checked
            rows.append({"launch": name, "num_warps": launch.num_warps, "error": f"{type(err).__name__}: {err}"})
            print(f"{name:<64} FAILS: {rows[-1]['error'].splitlines()[-1][:200]}")
            continue
        report = resources(compiled, args.arch)
        rows.append({"launch": name, "num_warps": launch.num_warps, **report})
        print(f"{name:<64} warps {launch.num_warps:>2}  " + "  ".join(f"{k} {v}" for k, v in report.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_compile.json").write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
