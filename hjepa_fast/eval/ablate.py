"""Deprecated alias of ``hjepa_fast.ablate``. The ablation trains and evaluates, so it sits above both
``train/`` and ``eval/`` (DESIGN.md); names imported from here still work, with a DeprecationWarning.
This alias is the one import from ``eval/`` upwards, and tests/test_import_directions.py allows it alone."""
from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    """``hjepa_fast.eval.ablate.X`` is ``hjepa_fast.ablate.X``, imported on first use."""
    from hjepa_fast import ablate

    warnings.warn("hjepa_fast.eval.ablate moved to hjepa_fast.ablate; import it from there", DeprecationWarning,
                  stacklevel=2)
    return getattr(ablate, name)
