"""Launch settings of the three Triton kernels, swept on one large shape each (CUDA only): device time (the
launch replayed from a CUDA graph), GB/s on the bytes each kernel itself moves, and the fraction of the
copy bandwidth measured in the same run. The defaults in ``kernels/*.py`` (``CUDA_TILE_ELEMENTS``/
``CUDA_WARPS``, ``CUDA_BLOCK``/``CUDA_WARPS``, ``TILE_ELEMENTS``/``CUDA_WARPS``) are chosen from this table.
Every setting's output is compared with the default setting's first (``max_abs_diff``): a fast but wrong
setting shows.

Kernels and bytes (what the kernel reads and writes, once each):
- masked loss forward (the gradient is computed there): read the prediction and gathered target rows and
  ``idx``, write the gradient; ViT-B video shapes, bf16;
- masked loss backward (that gradient times ``grad_output``): read it, write the product; the Triton kernel
  against torch's product;
- EMA: read target and source, write target; the ViT-B 3-level recipe's ~100 M parameters as one fp32
  flat buffer (what ``MultiLevelEMA`` launches);
- temporal pool forward (read k, v, write the output) and backward (read k, v, output gradient, write
  dk, dv), without and with the ``visible`` mask of the model's masked pool; ViT-B level 1 -> 2 (N 196,
  12 heads x 64, window 4), B 32, T 32, bf16.

``python -m benchmarks.sweep_launch [--out DIR] [--quick] [--kernels masked_loss ema temporal_pool]``
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple
from unittest import mock

import torch

from benchmarks.harness import copy_bandwidth, device_info, measure, parser, write_results
from hjepa_fast.kernels import ema, masked_loss, temporal_pool

Setting = dict[str, object]  # module attribute -> value


def setting_text(setting: Setting) -> str:
    """``cuda_tile_elements=2048 cuda_warps=2``: a setting as its rows and reports name it (of a per-device
    dict, the CUDA value)."""
    return " ".join(f"{attr.lower()}={value['cuda'] if isinstance(value, dict) else value}"
                    for attr, value in setting.items())


def _max_diff(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want))


def sweep(name: str, module, settings: list[Setting], run: Callable[[], tuple[torch.Tensor, ...]], nbytes: int,
          copy_gbps: float, device: torch.device, reset: Callable[[], object] = lambda: None) -> list[dict]:
    """Time ``run`` (the bare launch, returning its outputs) under each setting of ``module``'s launch
    attributes (restored afterwards); ``reset`` restores the inputs of an in-place kernel before each output
    comparison (not timed)."""
    defaults = current_setting(module, settings[0])
    reset()
    want = tuple(t.clone() for t in run())
    rows = []
    for setting in settings:
        try:
            with mock.patch.multiple(module, **setting):
                reset()
                diff = _max_diff(run(), want)
                t = measure_device_time(run, device)
        except Exception as err:  # a setting the compiler refuses (too many registers) is a row, not a crash
            print(f"{name} {setting}: {type(err).__name__}: {str(err)[:160]}")
            continue
        gbps = nbytes / (t["ms"] * 1e-3) / 1e9
        label = setting_text(setting)
        rows.append({"kernel": name, "path": label, "shape": name, **t, "gbps": gbps,
                     "frac_copy": gbps / copy_gbps, "max_abs_diff": diff, "default": setting == defaults})
        print(f"{name:<28} {label:<44} {t['ms']:8.3f} ms {gbps:8.1f} GB/s {gbps / copy_gbps:6.1%} of copy"
              f"  diff {diff:.2e}{'  (default)' if setting == defaults else ''}")
    return rows


def measure_device_time(run: Callable[[], object], device: torch.device) -> dict:
    """The launch's device time: replayed from a CUDA graph (the host's launch work left out: a small launch
    timed with ``do_bench`` measures the host, and every setting looks alike), else as a caller sees it if
    capture fails; ``timing`` says which."""
    try:
        return measure(run, device, graph=True) | {"timing": "graph"}
    except Exception as err:
        print(f"CUDA graph timing failed ({type(err).__name__}: {str(err)[:120]}); timing launches instead")
        return measure(run, device) | {"timing": "launch"}


def current_setting(module, like: Setting) -> Setting:
    """``module``'s values now of the launch attributes ``like`` names."""
    return {attr: getattr(module, attr) for attr in like}


def with_default(module, settings: list[Setting]) -> list[Setting]:
    """The module's current setting first (the reference output), then the others."""
    default = current_setting(module, settings[0])
    return [default, *[s for s in settings if s != default]]


class Case(NamedTuple):
    """One kernel launch to sweep: its module's launch settings, the launch, the bytes it moves."""

    name: str
    module: object
    settings: list[Setting]
    run: Callable[[], tuple[torch.Tensor, ...]]
    nbytes: int
    reset: Callable[[], object] = lambda: None


def loss_setting(elements: int, warps: int | None, tiles: int = 1, stages: int = 1, split: bool = False) -> Setting:
    """A launch setting of the loss kernel: tile elements, warps (None: by tile size), tiles per program,
    software-pipelining stages, rows split in two power-of-two chunks."""
    return {"CUDA_TILE_ELEMENTS": elements, "CUDA_WARPS": warps, "CUDA_TILES_PER_PROGRAM": tiles,
            "CUDA_STAGES": stages, "SPLIT_ROWS": split}


# run 2 (H200, one tile per program): fewer warps per tile were faster at D 768 (2048/2 best; 8192-element
# tiles and 8 warps lost, 46-57% of copy: dropped); one-row tiles extend that trend. Then software-pipelined
# programs (4-8 tiles each, 2-4 stages): the next tiles load into shared memory while one is computed; and
# split rows (768 = 512 + 256 columns, no padding): fewer registers, more programs an SM
MASKED_LOSS_SETTINGS = ([loss_setting(e, w) for e, w in [(2048, 1), (2048, 2), (2048, 4), (4096, 2), (4096, 4),
                                                         (1024, 1), (1024, 2), (1024, 4)]]
                        + [loss_setting(e, w, t, s) for e, w, t, s in [(1024, 1, 4, 2), (1024, 2, 8, 3),
                                                                       (1024, 2, 8, 4), (1024, 4, 8, 3),
                                                                       (1024, 4, 8, 4), (2048, 2, 8, 3)]]
                        + [loss_setting(e, w, t, s, split=True) for e, w, t, s in [(2048, 2, 1, 1), (2048, 1, 1, 1),
                                                                                   (1024, 1, 1, 1), (4096, 4, 1, 1),
                                                                                   (1024, 1, 4, 2)]])


def masked_loss_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    settings = with_default(masked_loss, MASKED_LOSS_SETTINGS)
    for B, M, N, D in [(16 if quick else 128, 1176, 1568, 768), (16 if quick else 128, 784, 1568, 96)]:
        g = torch.Generator(device=device).manual_seed(D)
        pred = torch.randn(B, M, D, device=device, dtype=torch.bfloat16, generator=g)
        target = torch.randn(B, N, D, device=device, dtype=torch.bfloat16, generator=g)
        idx = torch.rand(B, N, device=device, generator=g).argsort(1)[:, :M].contiguous()

        def run(pred=pred, target=target, idx=idx) -> tuple[torch.Tensor, ...]:
            return masked_loss._masked_latent_loss(pred, target, idx, masked_loss._L2, False, 1.0, True)

        yield Case(f"masked_loss fwd D{D}", masked_loss, settings, run, B * M * (3 * D * 2 + idx.element_size()))
        if D == 768:
            yield backward_scale_case(torch.randn(B, M, D, device=device, dtype=torch.bfloat16, generator=g))


# the backward's product (the forward's gradient times grad_output): the Triton kernel at the EMA kernel's
# settings and around them, against torch's ``grad * grad_output`` (TRITON_GRAD_SCALE False)
SCALE_SETTINGS = [{"TRITON_GRAD_SCALE": triton, "CUDA_SCALE_BLOCK": b, "CUDA_SCALE_WARPS": w}
                  for triton, b, w in [(True, 4096, 8), (True, 2048, 4), (True, 8192, 8), (False, 4096, 8)]]


def backward_scale_case(grad: torch.Tensor) -> Case:
    """The loss backward's launch on the forward's gradient ``grad`` (bf16): read it, write the product."""
    grad_loss = torch.tensor(0.5, device=grad.device)
    return Case(f"masked_loss bwd scale {grad.numel() / 1e6:.0f}M", masked_loss,
                with_default(masked_loss, SCALE_SETTINGS), lambda: (masked_loss._scaled_gradient(grad, grad_loss),),
                2 * grad.numel() * grad.element_size())


def ema_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    n = 10_000_000 if quick else 99_600_000
    start, source = torch.randn(n, device=device), torch.randn(n, device=device)
    target = start.clone()
    starts = torch.tensor([0, n // 2, 3 * n // 4], device=device)
    weights = torch.tensor([0.004, 0.002, 0.001], device=device)

    def run() -> tuple[torch.Tensor]:
        ema.ema_flat_triton_(target, source, starts, weights)
        return (target,)

    launches = [(1024, 4), (2048, 4), (4096, 8)]  # run 2 (H200): 104-105% of copy; larger blocks lost (78-99%)
    settings = with_default(ema, [{"CUDA_BLOCK": b, "CUDA_WARPS": w} for b, w in launches])
    yield Case(f"ema {n / 1e6:.1f}M fp32", ema, settings, run, 12 * n, reset=lambda: target.copy_(start))


def temporal_pool_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    B, T, H, Dh, window = 4 if quick else 32, 32, 12, 64, 4
    g = torch.Generator(device=device).manual_seed(1)
    k, v = (torch.randn(B, T, 196, H, Dh, device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
    q = torch.randn(H, Dh, device=device, dtype=torch.bfloat16, generator=g) * Dh**-0.5
    grad = torch.randn(B, T // window, 196, H, Dh, device=device, dtype=torch.bfloat16, generator=g)

    visible = torch.rand(B, T, 196, device=device, generator=g) > 0.3  # the model's masked pool (context only)

    def settings(launches: list[tuple[int, int]]) -> list[Setting]:
        return with_default(temporal_pool, [{"TILE_ELEMENTS": {**temporal_pool.TILE_ELEMENTS, "cuda": (t, t)},
                                             "CUDA_WARPS": (w, w)} for t, w in launches])

    # run 2 (H200, unmasked): the forward at copy bandwidth but with 8 warps at 4096 elements (39%); the
    # backward at 88-94% with 4096-8192 elements and 4-8 warps, 2-6x slower with 2048 elements or 16 warps
    fwd_settings, bwd_settings = settings([(4096, 4), (8192, 4), (8192, 8)]), settings([(4096, 4), (8192, 4), (8192, 8),
                                                                                       (16384, 4)])
    elt = k.element_size()
    for tag, vis in [("", None), (" masked", visible)]:
        vis_bytes = 0 if vis is None else vis.numel()
        yield Case(f"temporal_pool fwd{tag} B{B} T{T}", temporal_pool, fwd_settings,
                   lambda vis=vis: (temporal_pool._forward(q, k, v, window, vis),),
                   (2 * k.numel() + grad.numel()) * elt + vis_bytes)
        yield Case(f"temporal_pool bwd{tag} B{B} T{T}", temporal_pool, bwd_settings,
                   lambda vis=vis: temporal_pool._backward(q, k, v, window, vis, grad),
                   (4 * k.numel() + grad.numel()) * elt + vis_bytes)


# the order they run in: the EMA (settled, at copy bandwidth) last, where a time limit cuts first
CASES = {"masked_loss": masked_loss_cases, "temporal_pool": temporal_pool_cases, "ema": ema_cases}


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--kernels", nargs="+", choices=list(CASES), default=list(CASES), help="sweep only these")
    args = cli.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("sweep_launch measures CUDA launch settings: run it on a GPU")
    info = device_info(device) | {"copy_gbps": copy_bandwidth(device)}
    print(f"{info['name']}: copy {info['copy_gbps']:.1f} GB/s")
    rows = []
    for kernel in args.kernels:
        for case in CASES[kernel](device, args.quick):
            rows += sweep(case.name, case.module, case.settings, case.run, case.nbytes, info["copy_gbps"], device,
                          case.reset)
            write_results("sweep_launch", info, rows, args.out, label="path", group="shape")  # as it goes
    print(f"wrote {args.out / 'sweep_launch.json'}")


if __name__ == "__main__":
    main()
