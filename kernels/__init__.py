"""hjepa_fast.kernels: the fused ops of H-JEPA training, importable without the model stack.

Each op has a public functional form and a plain PyTorch reference beside it. Today the functional
forms run the reference (or the fastest torch-native path); the Triton kernels replace them behind the
same signatures, so model code never changes.
"""
from .dispatch import get_kernel_mode, kernel_mode, set_kernel_mode
from .ema import ema_update_, ema_update_reference_
from .masked_loss import masked_l2_loss, masked_l2_loss_reference
from .temporal_pool import temporal_attention_pool, temporal_attention_pool_reference

__all__ = [
    "get_kernel_mode",
    "kernel_mode",
    "set_kernel_mode",
    "ema_update_",
    "ema_update_reference_",
    "masked_l2_loss",
    "masked_l2_loss_reference",
    "temporal_attention_pool",
    "temporal_attention_pool_reference",
]
