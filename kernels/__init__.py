"""hjepa_fast.kernels: the fused ops of H-JEPA training, importable without the model stack.

Each op has a public functional form that dispatches (``dispatch.py``: Triton on CUDA, the PyTorch
path elsewhere), a plain PyTorch reference beside it, and a ``*_triton`` form that always runs the
Triton kernel (on CPU under ``TRITON_INTERPRET=1``, for tests). Launch settings come from a pure function
of shape, dtype and device per op (``masked_loss_launch``, ``temporal_pool_launch``, ``ema_launch``: frozen
dataclasses); the functions running a kernel take them as ``launch=`` (None: computed).
"""
from .dispatch import get_kernel_mode, kernel_mode, set_kernel_mode
from .ema import (
    EMALaunch,
    EMASchedule,
    MultiLevelEMA,
    ema_flat_,
    ema_flat_triton_,
    ema_launch,
    ema_update_,
    ema_update_reference_,
    ema_update_triton_,
)
from .masked_loss import (
    MaskedLossLaunch,
    masked_jepa_loss,
    masked_jepa_loss_reference,
    masked_jepa_loss_triton,
    masked_l2_loss,
    masked_l2_loss_reference,
    masked_l2_loss_triton,
    masked_loss_launch,
)
from .temporal_pool import (
    TemporalPoolLaunch,
    temporal_attention_pool,
    temporal_attention_pool_reference,
    temporal_attention_pool_triton,
    temporal_pool_launch,
)

__all__ = [
    "EMALaunch",
    "EMASchedule",
    "MaskedLossLaunch",
    "MultiLevelEMA",
    "TemporalPoolLaunch",
    "ema_flat_",
    "ema_flat_triton_",
    "ema_launch",
    "ema_update_",
    "ema_update_reference_",
    "ema_update_triton_",
    "get_kernel_mode",
    "kernel_mode",
    "masked_jepa_loss",
    "masked_jepa_loss_reference",
    "masked_jepa_loss_triton",
    "masked_l2_loss",
    "masked_l2_loss_reference",
    "masked_l2_loss_triton",
    "masked_loss_launch",
    "set_kernel_mode",
    "temporal_attention_pool",
    "temporal_attention_pool_reference",
    "temporal_attention_pool_triton",
    "temporal_pool_launch",
]
