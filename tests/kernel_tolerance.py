"""How close a kernel must come to the truth: as close as torch itself at the same dtype.

The truth is the operation computed in float64 from the same (already rounded) inputs. A kernel's error
against it may be at most twice torch's own error at the kernel's dtype, plus one ulp of the output dtype
at the output's scale: the rule flash-attention's tests use. The bound follows real rounding: float32
outputs are held to a few float32 ulps, bfloat16 ones to bfloat16's (which also covers the interpreter's
half-precision casts, which truncate where a GPU rounds), and a kernel that drops or misplaces a term
fails at every dtype.
"""
from __future__ import annotations

import torch


def assert_within_torch_error(got: torch.Tensor, torch_out: torch.Tensor, exact: torch.Tensor, *,
                              factor: float = 2.0, scale: float | None = None, ulps: float = 1.0,
                              keep: torch.Tensor | None = None, name: str = "output") -> None:
    """``max|got - exact| <= factor * max|torch_out - exact| + atol``.

    ``got``: the kernel's output; ``torch_out``: torch's at the same dtype; ``exact``: float64. ``atol`` is
    ``ulps`` ulps of ``got``'s dtype at ``scale`` (default: the largest ``|exact|``). ``keep``: the elements
    compared (default all). NaN in ``got`` where ``exact`` is finite (an element the kernel never wrote)
    fails."""
    assert got.shape == exact.shape == torch_out.shape, f"{name}: shapes {got.shape}, {exact.shape}"
    assert got.dtype == torch_out.dtype, f"{name}: dtype {got.dtype}, torch's {torch_out.dtype}"
    dtype = got.dtype
    got, torch_out, exact = (t.detach().double().cpu() for t in (got, torch_out, exact))
    if keep is not None:
        got, torch_out, exact = got[keep.cpu()], torch_out[keep.cpu()], exact[keep.cpu()]
    if exact.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element the kernel never wrote?)"
    scale = exact.abs().max().item() if scale is None else scale
    atol = ulps * torch.finfo(dtype).eps * scale
    kernel_error = (got - exact).abs().max().item()
    torch_error = (torch_out - exact).abs().max().item()
    assert kernel_error <= factor * torch_error + atol, (
        f"{name}: kernel error {kernel_error:.3g} exceeds {factor:g} x torch's {torch_error:.3g} + {atol:.3g}")
