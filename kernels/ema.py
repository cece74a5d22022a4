"""Multi-level EMA update of target encoders: ``target <- tau * target + (1 - tau) * source``.

Groups are levels: each group of (target, source) tensor pairs moves with its own ``tau``. The update is
pure memory traffic (read both, write the target: 12 B/param in fp32), so the goal is one pass at copy
bandwidth in as few launches as possible:

- ``MultiLevelEMA`` packs, per (dtype, device), the parameters of every level into one flat target buffer
  and one flat source buffer and makes each parameter's ``.data`` a view into them; a step is then one
  Triton launch per bucket (CUDA) or one ``lerp_`` per level slice (CPU), each element picking its level's
  weight from a small fp32 device table (no Python float reaches the kernel: Inductor would make it fp64).
- ``ema_update_`` is the functional form over arbitrary tensor lists: one Triton launch per bucket when the
  tensors already tile one flat buffer, else ``torch._foreach_lerp_`` with one weight per tensor, one call
  per dtype (foreach falls back to a per-tensor loop when dtypes differ inside one list).

Exactness: the lerp is computed in fp32 as torch.lerp does, ``w < 0.5 ? t + w*(s-t) : s - (s-t)*(1-w)``
with ``w = 1 - tau``, so tau=1 keeps the target bit for bit and tau=0 copies the source bit for bit.
bf16 targets: near tau = 0.9999 the step ``(1 - tau) * (s - t)`` is often below half a bf16 ulp of ``t``
and rounds away, so a bf16 target stalls; keep targets in fp32.
Sharded parameters: a DTensor (FSDP2) is updated through ``.to_local()``, a DeepSpeed ZeRO-3 parameter
through its local partition ``.ds_tensor`` (targets and sources must be partitioned alike); sharded sets
are never packed (the engine owns their storage) and run the functional path each step.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .dispatch import get_kernel_mode, use_triton
from .launch import cdiv, next_power_of_2

TensorGroups = Sequence[Sequence[torch.Tensor]]


@triton.jit
def _ema_flat_kernel(t_ptr, s_ptr, starts_ptr, w_ptr, n, NUM_LEVELS: tl.constexpr, BLOCK: tl.constexpr):
    """t[i] <- lerp(t[i], s[i], w[level(i)]) over a flat buffer; level(i) = last l with starts[l] <= i."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.zeros([BLOCK], dtype=tl.float32)
    for lvl in tl.static_range(NUM_LEVELS):
        w = tl.where(offs >= tl.load(starts_ptr + lvl), tl.load(w_ptr + lvl).to(tl.float32), w)
    t = tl.load(t_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + offs, mask=mask).to(tl.float32)
    d = s - t
    out = tl.where(w < 0.5, t + w * d, s - d * (1.0 - w))
    tl.store(t_ptr + offs, out.to(t_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class EMALaunch:
    """How the flat EMA kernel launches (``ema_launch`` computes it)."""

    block: int  # elements per program (a power of two)
    num_warps: int


@functools.lru_cache(maxsize=256)
def ema_launch(n: int, dtype: torch.dtype, device: torch.device | str, *, block: int = 4096,
               warps: int = 8) -> EMALaunch:
    """The launch for a flat buffer of ``n`` elements on ``device`` (a pure function, cached; ``dtype`` does not
    enter the rules). CUDA: ``block`` elements and ``warps`` a program (``benchmarks.sweep_launch`` measures the
    alternatives); under the interpreter (~3 ms per program) as few programs as possible, one warp."""
    if torch.device(device).type == "cuda":
        return EMALaunch(block, warps)
    return EMALaunch(min(max(next_power_of_2(max(n, 1)), 16), 1 << 16), 1)


def _check_flat(target: torch.Tensor, source: torch.Tensor, level_starts: torch.Tensor, weights: torch.Tensor):
    if target.dim() != 1 or source.shape != target.shape or source.dtype != target.dtype:
        raise ValueError(f"flat EMA needs 1-d target and source of one shape and dtype, got "
                         f"{tuple(target.shape)} {target.dtype} and {tuple(source.shape)} {source.dtype}")
    if not (target.is_contiguous() and source.is_contiguous()):
        raise ValueError("flat EMA needs contiguous target and source buffers")
    if level_starts.dim() != 1 or level_starts.dtype != torch.int64 or weights.shape != level_starts.shape:
        raise ValueError(f"level_starts must be int64 [L] and weights [L], got {level_starts.dtype} "
                         f"{tuple(level_starts.shape)} and {tuple(weights.shape)}")
    if weights.dtype != torch.float32 or len({t.device for t in (target, source, level_starts, weights)}) != 1:
        raise ValueError("weights must be float32 and all four tensors on one device")


def ema_flat_triton_(target: torch.Tensor, source: torch.Tensor, level_starts: torch.Tensor,
                     weights: torch.Tensor, block: int | None = None, *, launch: EMALaunch | None = None) -> None:
    """Always Triton: ``target[i] <- lerp(target[i], source[i], weights[level(i)])``. target, source:
    ``[N]`` contiguous; level_starts: int64 ``[L]`` ascending from 0; weights: fp32 ``[L]`` (= 1 - tau).
    ``launch``: the kernel's launch settings (None: ``ema_launch`` of N, dtype and device); ``block``
    overrides its block alone."""
    _check_flat(target, source, level_starts, weights)
    n = target.numel()
    if n == 0:
        return
    launch = launch or ema_launch(n, target.dtype, target.device)
    block_size = block or launch.block
    _ema_flat_kernel[(cdiv(n, block_size),)](
        target, source, level_starts, weights, n, NUM_LEVELS=level_starts.numel(), BLOCK=block_size,
        num_warps=launch.num_warps)


@torch.library.custom_op("hjepa_fast::ema_flat_", mutates_args=("target",))
def ema_flat_(target: torch.Tensor, source: torch.Tensor, level_starts: torch.Tensor, weights: torch.Tensor,
              launch: list[int] | None = None) -> None:
    """The traceable flat update (see ``ema_flat_triton_``): Triton where ``use_triton`` says so, else one
    ``lerp_`` per level slice with the weight as a Python float (the reference's exact arithmetic).
    ``launch``: the fields of an ``EMALaunch`` (None: computed)."""
    if use_triton(target):
        ema_flat_triton_(target, source, level_starts, weights, launch=None if launch is None else EMALaunch(*launch))
        return
    _check_flat(target, source, level_starts, weights)
    bounds = [*level_starts.tolist(), target.numel()]
    for lvl, w in enumerate(weights.tolist()):
        if bounds[lvl + 1] > bounds[lvl]:
            target[bounds[lvl]:bounds[lvl + 1]].lerp_(source[bounds[lvl]:bounds[lvl + 1]], w)


@ema_flat_.register_fake
def _(target, source, level_starts, weights, launch=None) -> None:
    return None


def _local(t: torch.Tensor) -> torch.Tensor:
    """The locally stored part of a parameter: DTensor shard (FSDP2), ZeRO-3 partition, or the tensor."""
    if hasattr(t, "to_local"):
        return t.to_local()
    return getattr(t, "ds_tensor", t)


def _as_groups(
    targets: TensorGroups | Sequence[torch.Tensor], sources: TensorGroups | Sequence[torch.Tensor],
    taus: float | Sequence[float],
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], list[float]]:
    """Accept groups or flat lists, a float or one float per group; validate pairs; local shards."""
    if len(targets) and isinstance(targets[0], torch.Tensor):
        targets, sources = [list(targets)], [list(sources)]
    targets = [[_local(t) for t in g] for g in targets]
    sources = [[_local(s) for s in g] for g in sources]
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} target groups but {len(sources)} source groups")
    taus = [float(taus)] * len(targets) if isinstance(taus, (int, float)) else [float(t) for t in taus]
    if len(taus) != len(targets):
        raise ValueError(f"{len(taus)} taus for {len(targets)} groups")
    for level, (tg, sg, tau) in enumerate(zip(targets, sources, taus)):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau of group {level} must lie in [0, 1], got {tau}")
        if len(tg) != len(sg):
            raise ValueError(f"group {level}: {len(tg)} targets but {len(sg)} sources")
        for i, (t, s) in enumerate(zip(tg, sg)):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                raise ValueError(
                    f"group {level}, tensor {i}: target {tuple(t.shape)} {t.dtype} {t.device} does not match "
                    f"source {tuple(s.shape)} {s.dtype} {s.device}"
                )
            if not t.is_floating_point():
                raise ValueError(f"group {level}, tensor {i}: EMA needs floating tensors, got {t.dtype}")
    return targets, sources, taus


def _buckets(targets, sources, taus) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[float], list[int]]]:
    """Per (dtype, device): targets, sources, weight (1 - tau) and level of each pair, in level order."""
    out: dict = {}
    for level, (tg, sg, tau) in enumerate(zip(targets, sources, taus)):
        for t, s in zip(tg, sg):
            b = out.setdefault((t.dtype, t.device), ([], [], [], []))
            b[0].append(t), b[1].append(s), b[2].append(1.0 - tau), b[3].append(level)
    return list(out.values())


def _flat_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-d view covering ``tensors`` when they tile one storage contiguously in order, else None."""
    first, offset = tensors[0], tensors[0].storage_offset()
    ptr = first.untyped_storage().data_ptr()
    for t in tensors:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() != ptr or t.storage_offset() != offset:
            return None
        offset += t.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


def _level_table(tensors, weights, levels, device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 start offset and fp32 weight of each level run in a packed bucket (built on the host)."""
    starts, ws, offset, last = [], [], 0, None
    for t, w, lvl in zip(tensors, weights, levels):
        if lvl != last:
            starts.append(offset), ws.append(w)
            last = lvl
        offset += t.numel()
    return (torch.tensor(starts, dtype=torch.int64).to(device), torch.tensor(ws, dtype=torch.float32).to(device))


def _triton_bucket(tg, sg, ws, levels, flat: tuple[torch.Tensor, torch.Tensor] | None,
                   launch: EMALaunch | None = None) -> None:
    """One launch over a packed bucket, else one launch per tensor (no pointer tables: see FACTS §2)."""
    if flat is not None:
        ema_flat_triton_(*flat, *_level_table(tg, ws, levels, tg[0].device), launch=launch)
        return
    zero = torch.zeros(1, dtype=torch.int64, device=tg[0].device)
    for t, s, w in zip(tg, sg, ws):
        work = t if t.is_contiguous() else t.contiguous()
        ema_flat_triton_(work.view(-1), s.contiguous().view(-1), zero,
                         torch.tensor([w], dtype=torch.float32, device=t.device), launch=launch)
        if work is not t:
            t.copy_(work)


def _packed(tg, sg) -> tuple[torch.Tensor, torch.Tensor] | None:
    ft, fs = _flat_view(tg), _flat_view(sg)
    return None if ft is None or fs is None else (ft, fs)


@torch.no_grad()
def ema_update_reference_(targets, sources, taus) -> None:
    """Per-tensor Python loop: the ground truth for tests."""
    targets, sources, taus = _as_groups(targets, sources, taus)
    for tg, sg, tau in zip(targets, sources, taus):
        for t, s in zip(tg, sg):
            t.lerp_(s, 1.0 - tau)


@torch.no_grad()
def ema_update_triton_(targets, sources, taus, *, launch: EMALaunch | None = None) -> None:
    """Always Triton (on CPU under ``TRITON_INTERPRET=1``): one launch per (dtype, device) bucket whose
    tensors tile one flat buffer (as ``MultiLevelEMA`` lays them out), else one launch per tensor.
    ``launch``: every launch's settings (None: ``ema_launch`` of each)."""
    for tg, sg, ws, levels in _buckets(*_as_groups(targets, sources, taus)):
        _triton_bucket(tg, sg, ws, levels, _packed(tg, sg), launch)


@torch.no_grad()
def ema_update_(targets, sources, taus, *, launch: EMALaunch | None = None) -> None:
    """In-place EMA of every group with its own tau. ``targets``/``sources``: sequences of groups (one per
    level) of tensors of matching shape and dtype, or flat sequences; ``taus``: one float per group or one
    float. Triton (one launch) for packed CUDA buckets, at ``launch`` (None: computed); otherwise
    ``torch._foreach_lerp_`` per dtype."""
    for tg, sg, ws, levels in _buckets(*_as_groups(targets, sources, taus)):
        if use_triton(tg[0]):
            flat = _packed(tg, sg)
            if flat is not None or get_kernel_mode() == "triton":
                _triton_bucket(tg, sg, ws, levels, flat, launch)
                continue
        torch._foreach_lerp_(tg, sg, ws)


SCHEDULE_KINDS = ("cosine", "linear")


@dataclass(frozen=True)
class EMASchedule:
    """Per-level momentum from ``tau_base`` at step 0 to ``tau_end`` at step ``T = total_steps`` (held
    after), with progress ``p = t / T``:

    - ``cosine``: ``tau_t = tau_end - (tau_end - tau_base) * (cos(pi p) + 1) / 2`` (BYOL; our default);
    - ``linear``: ``tau_t = tau_base + (tau_end - tau_base) * p`` (I-JEPA, V-JEPA; I-JEPA stretches ``T``
      to 1.25x the run, so pass ``total_steps = 1.25 * steps`` to match it).

    ``kind``: one name for every level or one per level."""

    tau_base: Sequence[float]
    tau_end: Sequence[float]
    total_steps: int
    kind: str | Sequence[str] = "cosine"

    def __post_init__(self):
        if len(self.tau_base) != len(self.tau_end):
            raise ValueError(f"{len(self.tau_base)} tau_base for {len(self.tau_end)} tau_end")
        if not all(0.0 <= t <= 1.0 for t in (*self.tau_base, *self.tau_end)):
            raise ValueError(f"taus must lie in [0, 1], got {list(self.tau_base)} -> {list(self.tau_end)}")
        if self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {self.total_steps}")
        kinds = self.kinds
        if len(kinds) != len(self.tau_base) or any(k not in SCHEDULE_KINDS for k in kinds):
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS} or one per level ({len(self.tau_base)}), "
                             f"got {self.kind!r}")

    @property
    def kinds(self) -> list[str]:
        """One schedule name per level."""
        return [self.kind] * len(self.tau_base) if isinstance(self.kind, str) else list(self.kind)

    def _ramp(self, p: torch.Tensor) -> torch.Tensor:
        """p [S] progress in [0, 1] -> [S, L] fraction of the way from tau_base to tau_end (float64)."""
        ramps = {"cosine": 0.5 * (1.0 - torch.cos(math.pi * p)), "linear": p}
        return torch.stack([ramps[k] for k in self.kinds], dim=1)

    def table(self) -> torch.Tensor:
        """``[T + 1, L]`` float64: tau of every level at steps 0..T."""
        p = torch.arange(self.total_steps + 1, dtype=torch.float64) / max(self.total_steps, 1)
        base, end = (torch.tensor(x, dtype=torch.float64) for x in (self.tau_base, self.tau_end))
        return base + (end - base) * self._ramp(p)

    def taus(self, step: int) -> list[float]:
        p = min(max(step / max(self.total_steps, 1), 0.0), 1.0)
        ramps = {"cosine": 0.5 * (1.0 - math.cos(math.pi * p)), "linear": p}
        return [b + (e - b) * ramps[k] for b, e, k in zip(self.tau_base, self.tau_end, self.kinds)]


def _packable(p: torch.Tensor) -> bool:
    """True when ``p`` owns its whole storage (or views one of our flat buffers): then nothing else (a
    DeepSpeed ZeRO-1/2 or FSDP1 flat buffer, a tied view) reads that storage and rebinding ``.data`` is safe."""
    if hasattr(p, "to_local") or hasattr(p, "ds_tensor"):
        return False
    storage = p.untyped_storage()
    if getattr(p, "_ema_flat_storage", None) == storage.data_ptr():
        return True
    return p.storage_offset() == 0 and storage.nbytes() == p.numel() * p.element_size()


def _params(m: torch.nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return list(m.parameters()) if isinstance(m, torch.nn.Module) else list(m)


class MultiLevelEMA:
    """EMA of every level's target encoder toward its online encoder, one launch per (dtype, device).

    ``target_modules``/``source_modules``: one module (or parameter list) per level, same structure;
    ``schedule``: an ``EMASchedule`` with one tau_base/tau_end per level. Build it after the model has
    reached its device (and before or after the optimizer: the Parameter objects stay the same, only their
    ``.data`` becomes a view into the flat buffers). If something later rebinds the parameters' storage
    (``module.to()``, ``load_state_dict(assign=True)``), the next ``step()`` notices and repacks; after
    rebinding single parameters by hand call ``repack()``. Parameters that are sharded (FSDP2 DTensor,
    ZeRO-3) or views into a buffer someone else owns (ZeRO-1/2 or FSDP1 flattening) are never packed (a
    warning says so): ``pack=False`` behaviour, ``ema_update_`` on the local tensors each step (foreach).
    The fp32 weights of all steps live in one ``[T+1, L]`` device table (4 B per level and step), so a
    step moves no host data to the device and never syncs.

    For porters: packing rebinds every parameter's ``.data`` (same Parameter objects, so optimisers,
    hooks and ``state_dict`` keep working; ``p.data_ptr()`` changes and ``p`` is no longer contiguous
    storage of its own). Code that caches ``p.data`` or storage pointers from before, or that rebinds
    ``.data`` itself, should build the EMA after it or pass ``pack=False``: parameters stay untouched and
    each step is one ``torch._foreach_lerp_`` per dtype and device (a launch per ~64 tensors on CUDA
    instead of one)."""

    def __init__(self, target_modules, source_modules, schedule: EMASchedule, pack: bool = True):
        self.targets = [_params(m) for m in target_modules]
        self.sources = [_params(m) for m in source_modules]
        self.schedule, self.step_count = schedule, 0
        _as_groups(self.targets, self.sources, schedule.taus(0))
        ids = [id(p) for g in (*self.targets, *self.sources) for p in g]
        if len(ids) != len(set(ids)):
            raise ValueError("a parameter appears twice among targets and sources (tied weights?)")
        self.packed = pack
        self._weights_host = (1.0 - schedule.table()).float()
        self._weights: dict[torch.device, torch.Tensor] = {}
        self._buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, int]]]] = []
        if self.packed:
            self._pack()

    @torch.no_grad()
    def _pack(self) -> None:
        """Per (dtype, device): flat target and source buffers; every parameter becomes a view into them.
        Parameters an engine shards or flattens (see ``_packable``) stay where they are: unpacked path."""
        self._buckets = []
        if not all(_packable(p) for g in (*self.targets, *self.sources) for p in g):
            if self.packed:
                warnings.warn("MultiLevelEMA: parameters are sharded or views into another buffer (FSDP, "
                              "DeepSpeed); updating them in place with ema_update_ instead of one launch",
                              stacklevel=3)
            self.packed = False
            return
        for tg, sg, _, levels in _buckets(self.targets, self.sources, [0.0] * len(self.targets)):
            dev, n = tg[0].device, sum(t.numel() for t in tg)
            flat_t, flat_s = (torch.empty(n, dtype=tg[0].dtype, device=dev) for _ in range(2))
            starts, offset, seen = [0] * len(self.targets), 0, set()
            for t, s, lvl in zip(tg, sg, levels):
                if lvl not in seen:
                    seen.add(lvl)
                    starts[lvl] = offset
                k = t.numel()
                for p, flat in ((t, flat_t), (s, flat_s)):
                    flat[offset:offset + k].copy_(p.detach().reshape(-1))
                    p.data = flat[offset:offset + k].view(p.shape)
                    p._ema_flat_storage = flat.untyped_storage().data_ptr()
                offset += k
            for lvl in range(len(self.targets) - 1, -1, -1):  # a level absent here starts where the next does
                if lvl not in seen:
                    starts[lvl] = starts[lvl + 1] if lvl + 1 < len(self.targets) else n
            if dev not in self._weights:
                self._weights[dev] = self._weights_host.to(dev)
            probes = [(p, p.data_ptr()) for p in (tg[0], tg[-1], sg[0], sg[-1])]
            self._buckets.append((flat_t, flat_s, torch.tensor(starts, dtype=torch.int64, device=dev), probes))

    def _intact(self) -> bool:
        """Cheap check (4 parameters per bucket; all 680 of the ViT-B recipe would cost ~0.3 ms of host
        time per step) that the first and last parameters of each bucket still view the flat buffers:
        catches module-wide rebinding (``.to()``, ``load_state_dict(assign=True)``); call ``repack()``
        after rebinding single parameters by hand."""
        return all(p.data_ptr() == ptr for *_, probes in self._buckets for p, ptr in probes)

    def repack(self) -> None:
        """Re-point every parameter into fresh flat buffers (after something rebound their storage)."""
        if self.packed:
            self._pack()

    def taus(self, step: int) -> list[float]:
        return self.schedule.taus(step)

    @torch.no_grad()
    def step(self, step: int | None = None) -> list[float]:
        """Apply the update for optimiser step ``step`` (0-based; default: the internal counter), advance the
        counter to ``step + 1`` and return the taus used."""
        t = self.step_count if step is None else int(step)
        if t < 0:
            raise ValueError(f"step must be >= 0, got {t}")
        taus = self.taus(t)
        if self.packed and not self._intact():
            self._pack()
        if not self.packed:
            ema_update_(self.targets, self.sources, taus)
        else:
            row = min(t, self.schedule.total_steps)
            for flat_t, flat_s, starts, *_ in self._buckets:
                ema_flat_(flat_t, flat_s, starts, self._weights[flat_t.device][row])
        self.step_count = t + 1
        return taus

    def state_dict(self) -> dict:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
