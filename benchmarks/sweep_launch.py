"""Launch settings of the three Triton kernels, swept on one large shape each (CUDA only): device time (the
launch replayed from a CUDA graph), GB/s on the bytes each kernel itself moves, and the fraction of the
copy bandwidth measured in the same run. A setting is keyword arguments of the op's launch-settings function
(``masked_loss_launch``, ``ema_launch``, ``temporal_pool_launch``), whose defaults are chosen from this table;
each launch is made with ``launch=`` that function's result (no module state is patched).
Every setting's output is compared with the default setting's first (``max_abs_diff``): a fast but wrong
setting shows. The default and the three fastest other settings are then timed a second time (``round`` 2;
``benchmarks.goals`` ranks settings by the mean of their rounds). The loss launches cycle through copies of
their inputs so that the graph's calls read cold memory (``harness.cold_copies``).

Kernels and bytes (what the kernel reads and writes, once each):
- masked loss forward (the gradient is computed there): read the prediction and gathered target rows and
  ``idx``, write the gradient; ViT-B video shapes, bf16, ``idx`` rows in increasing order as mask generators
  give them (at D 96 also in random order);
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

import inspect
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from benchmarks.harness import Cycling, cold_copies, copy_bandwidth, device_info, measure, parser, write_results
from hjepa_fast.kernels import ema, masked_loss, temporal_pool

Setting = dict[str, object]  # keyword argument of an op's launch-settings function -> value


def setting_text(setting: Setting) -> str:
    """``tile_elements=2048 warps=2``: a setting as its rows and reports name it (a (forward, backward) pair
    as ``4096/4096``)."""
    return " ".join(f"{key}={'/'.join(map(str, value)) if isinstance(value, tuple) else value}"
                    for key, value in setting.items())


def _max_diff(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want))


# after a case's settings are timed once, the default and this many of the fastest others are timed again, in
# the reverse order: run 1 timed one D 96 setting at 0.103 and 0.056 ms in the same sweep (as the default
# and again under its own name), so a single time per setting can pick a winner from noise
CONFIRMED = 3


def sweep(name: str, settings_fn: Callable, settings: list[Setting], run: Callable[[Setting], tuple[torch.Tensor, ...]],
          nbytes: int, copy_gbps: float, device: torch.device, reset: Callable[[], object] = lambda: None
          ) -> list[dict]:
    """Time ``run(setting)`` (the bare launch under ``setting``, keyword arguments of ``settings_fn``, returning
    its outputs) for each setting, then the default and the ``CONFIRMED`` fastest others a second time (rows
    with ``round`` 2); ``reset`` restores the inputs before each output comparison (not timed)."""
    defaults = default_setting(settings_fn, settings[0])
    reset()
    want = tuple(t.clone() for t in run(defaults))
    rows, timed = [], {}
    for setting in settings:
        try:
            reset()
            diff = _max_diff(run(setting), want)
            t = measure_device_time(lambda setting=setting: run(setting), device)
        except Exception as err:  # a setting the compiler refuses (too many registers) is a row, not a crash
            print(f"{name} {setting}: {type(err).__name__}: {str(err)[:160]}")
            continue
        rows.append(_row(name, setting_text(setting), t, nbytes, copy_gbps, diff, setting == defaults, 1))
        timed[rows[-1]["path"]] = setting
    others = sorted((r for r in rows if not r["default"]), key=lambda r: r["ms"])[:CONFIRMED]
    for first in reversed([r for r in rows if r["default"]] + others):
        try:
            t = measure_device_time(lambda setting=timed[first["path"]]: run(setting), device)
        except Exception as err:  # e.g. out of memory: the first round's rows still count
            print(f"{name} {first['path']} again: {type(err).__name__}: {str(err)[:160]}")
            continue
        rows.append(_row(name, first["path"], t, nbytes, copy_gbps, first["max_abs_diff"], first["default"], 2))
    return rows


def _row(name: str, label: str, t: dict, nbytes: int, copy_gbps: float, diff: float, default: bool,
         round_: int) -> dict:
    """One sweep row (printed): the setting's time, GB/s on ``nbytes``, fraction of copy, output difference."""
    gbps = nbytes / (t["ms"] * 1e-3) / 1e9
    print(f"{name:<28} {label:<44} {t['ms']:8.3f} ms {gbps:8.1f} GB/s {gbps / copy_gbps:6.1%} of copy"
          f"  diff {diff:.2e}{'  (default)' if default else ''}{'  (again)' if round_ > 1 else ''}")
    return {"kernel": name, "path": label, "shape": name, **t, "gbps": gbps, "frac_copy": gbps / copy_gbps,
            "max_abs_diff": diff, "default": default, "round": round_}


def measure_device_time(run: Callable[[], object], device: torch.device) -> dict:
    """The launch's device time: replayed from a CUDA graph (the host's launch work left out: a small launch
    timed with ``do_bench`` measures the host, and every setting looks alike), else as a caller sees it if
    capture fails; ``timing`` says which."""
    try:
        return measure(run, device, graph=True) | {"timing": "graph"}
    except Exception as err:
        print(f"CUDA graph timing failed ({type(err).__name__}: {str(err)[:120]}); timing launches instead")
        return measure(run, device) | {"timing": "launch"}


def default_setting(settings_fn: Callable, like: Setting) -> Setting:
    """The defaults of ``settings_fn``'s keyword arguments that ``like`` names (a misspelt name fails here)."""
    params = inspect.signature(settings_fn).parameters
    return {key: params[key].default for key in like}


def with_default(settings_fn: Callable, settings: list[Setting]) -> list[Setting]:
    """The default setting first (the reference output), then the others."""
    default = default_setting(settings_fn, settings[0])
    return [default, *[s for s in settings if s != default]]


class Case(NamedTuple):
    """One kernel launch to sweep: its op's launch-settings function, the settings (keyword arguments of it),
    the launch under a setting, the bytes it moves."""

    name: str
    settings_fn: Callable
    settings: list[Setting]
    run: Callable[[Setting], tuple[torch.Tensor, ...]]
    nbytes: int
    reset: Callable[[], object] = lambda: None


def loss_setting(elements: int, warps: int | None, tiles: int = 1, stages: int = 1, split: bool = False) -> Setting:
    """A launch setting of the loss kernel (``masked_loss_launch``): tile elements, warps (None: by tile size),
    tiles per program, software-pipelining stages, rows split in two power-of-two chunks."""
    return {"tile_elements": elements, "warps": warps, "tiles": tiles, "stages": stages, "split_rows": split}


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


def loss_inputs(shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: torch.device,
                g: torch.Generator, in_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``pred [B, M, D]``, ``target [B_t, N, D]`` and ``idx [B, M]`` for ``shape`` = (B, M, N, D, B_t):
    each row of ``idx`` a random set of distinct positions, in increasing order as mask generators give them
    (``hjepa_fast.masks``; I-JEPA's mask collator takes ``torch.nonzero`` of a block mask), or in random order
    (``in_order=False``: the gather's worst case)."""
    B, M, N, D, Bt = shape
    pred = torch.randn(B, M, D, device=device, dtype=dtype, generator=g)
    target = torch.randn(Bt, N, D, device=device, dtype=dtype, generator=g)
    idx = torch.rand(B, N, device=device, generator=g).argsort(1)[:, :M]
    return pred, target, (idx.sort(1).values if in_order else idx).contiguous()


def loss_input_bytes(B: int, M: int, D: int, element_size: int) -> int:
    """What one loss call reads of ``loss_inputs``: the ``B*M`` prediction and gathered target rows and the
    int64 ``idx`` (what ``harness.cold_copies`` sizes the input copies on)."""
    return B * M * (2 * D * element_size + 8)


def _l2_loss_launch(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, setting: Setting
                    ) -> tuple[torch.Tensor, ...]:
    launch = masked_loss.masked_loss_launch(pred.shape, pred.dtype, pred.device, **setting)
    return masked_loss._masked_latent_loss(pred, target, idx, masked_loss._L2, False, 1.0, True, launch)


# the gather in random order (a worst case no mask generator we know of produces), at D 96, where a target row
# is 192 bytes: beside the default, the one-tile settings among the fastest there in both runs 1 and 2
OUT_OF_ORDER_SETTINGS = [loss_setting(e, w) for e, w in [(4096, 4), (2048, 8)]]


def masked_loss_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    """The L2 loss forward at D 768 and D 96 (bf16), each on enough copies of its inputs to be timed cold
    (``harness.cold_copies``: the D 96 case reads ~39 MB, less than an H200's 50 MB L2), at D 96 also with
    ``idx`` in random order; the backward's product."""
    B = 16 if quick else 128
    for M, N, D, in_order in [(1176, 1568, 768, True), (784, 1568, 96, True), (784, 1568, 96, False)]:
        g = torch.Generator(device=device).manual_seed(D)
        nbytes = B * M * (3 * D * 2 + 8)  # bf16 prediction and target rows read, gradient written; int64 idx
        copies = [loss_inputs((B, M, N, D, B), torch.bfloat16, device, g, in_order)
                  for _ in range(cold_copies(loss_input_bytes(B, M, D, 2), device))]
        run = Cycling(_l2_loss_launch, copies)
        settings = with_default(masked_loss.masked_loss_launch,
                                MASKED_LOSS_SETTINGS if in_order else OUT_OF_ORDER_SETTINGS)
        yield Case(f"masked_loss fwd D{D}" + ("" if in_order else " idx out of order"), masked_loss.masked_loss_launch,
                   settings, run, nbytes, reset=run.restart)
        if D == 768:
            yield backward_scale_case((B, M, D), device, g)


# the backward's product (the forward's gradient times grad_output): the Triton kernel at the EMA kernel's
# settings and around them, against torch's ``grad * grad_output`` (``triton_scale`` False)
SCALE_SETTINGS = [{"triton_scale": triton, "scale_block": b, "scale_warps": w}
                  for triton, b, w in [(True, 4096, 8), (True, 2048, 4), (True, 8192, 8), (False, 4096, 8)]]


def backward_scale_case(shape: tuple[int, ...], device: torch.device, g: torch.Generator) -> Case:
    """The loss backward's launch on a forward's gradient of ``shape`` (bf16; copies to be timed cold): read
    it, write the product."""
    n = torch.Size(shape).numel()
    nbytes = 2 * n * 2
    grads = [(torch.randn(shape, device=device, dtype=torch.bfloat16, generator=g),)
             for _ in range(cold_copies(n * 2, device))]
    grad_loss = torch.tensor(0.5, device=device)
    def scaled(grad: torch.Tensor, setting: Setting) -> tuple[torch.Tensor]:
        launch = masked_loss.masked_loss_launch(grad.shape, grad.dtype, grad.device, **setting)
        return (masked_loss._scaled_gradient(grad, grad_loss, launch),)

    run = Cycling(scaled, grads)
    return Case(f"masked_loss bwd scale {n / 1e6:.0f}M", masked_loss.masked_loss_launch,
                with_default(masked_loss.masked_loss_launch, SCALE_SETTINGS), run, nbytes, reset=run.restart)


def ema_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    n = 10_000_000 if quick else 99_600_000
    start, source = torch.randn(n, device=device), torch.randn(n, device=device)
    target = start.clone()
    starts = torch.tensor([0, n // 2, 3 * n // 4], device=device)
    weights = torch.tensor([0.004, 0.002, 0.001], device=device)

    def run(setting: Setting) -> tuple[torch.Tensor]:
        ema.ema_flat_triton_(target, source, starts, weights, launch=ema.ema_launch(n, target.dtype, device, **setting))
        return (target,)

    launches = [(1024, 4), (2048, 4), (4096, 8)]  # run 2 (H200): 104-105% of copy; larger blocks lost (78-99%)
    settings = with_default(ema.ema_launch, [{"block": b, "warps": w} for b, w in launches])
    yield Case(f"ema {n / 1e6:.1f}M fp32", ema.ema_launch, settings, run, 12 * n, reset=lambda: target.copy_(start))


def temporal_pool_cases(device: torch.device, quick: bool) -> Iterator[Case]:
    B, T, H, Dh, window = 4 if quick else 32, 32, 12, 64, 4
    g = torch.Generator(device=device).manual_seed(1)
    k, v = (torch.randn(B, T, 196, H, Dh, device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
    q = torch.randn(H, Dh, device=device, dtype=torch.bfloat16, generator=g) * Dh**-0.5
    grad = torch.randn(B, T // window, 196, H, Dh, device=device, dtype=torch.bfloat16, generator=g)

    visible = torch.rand(B, T, 196, device=device, generator=g) > 0.3  # the model's masked pool (context only)

    settings_fn = temporal_pool.temporal_pool_launch

    def settings(launches: list[tuple[int, int]]) -> list[Setting]:
        return with_default(settings_fn, [{"tile_elements": (t, t), "warps": (w, w)} for t, w in launches])

    def launch(setting: Setting) -> temporal_pool.TemporalPoolLaunch:
        return settings_fn(k.shape, window, k.dtype, k.device, **setting)

    # run 2 (H200, unmasked): the forward at copy bandwidth but with 8 warps at 4096 elements (39%); the
    # backward at 88-94% with 4096-8192 elements and 4-8 warps, 2-6x slower with 2048 elements or 16 warps
    fwd_settings, bwd_settings = settings([(4096, 4), (8192, 4), (8192, 8)]), settings([(4096, 4), (8192, 4), (8192, 8),
                                                                                       (16384, 4)])
    elt = k.element_size()
    for tag, vis in [("", None), (" masked", visible)]:
        vis_bytes = 0 if vis is None else vis.numel()
        yield Case(f"temporal_pool fwd{tag} B{B} T{T}", settings_fn, fwd_settings,
                   lambda setting, vis=vis: (temporal_pool._forward(q, k, v, window, vis, launch(setting)),),
                   (2 * k.numel() + grad.numel()) * elt + vis_bytes)
        yield Case(f"temporal_pool bwd{tag} B{B} T{T}", settings_fn, bwd_settings,
                   lambda setting, vis=vis: temporal_pool._backward(q, k, v, window, vis, grad, launch(setting)),
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
            rows += sweep(case.name, case.settings_fn, case.settings, case.run, case.nbytes, info["copy_gbps"],
                          device, case.reset)
            write_results("sweep_launch", info, rows, args.out, label="path", group="shape")  # as it goes
    print(f"wrote {args.out / 'sweep_launch.json'}")


if __name__ == "__main__":
    main()
