"""Environments behind one interface (``base.Env``): panworld (embedded photos), tworooms (embedded
maze), fourrooms (embedded, four rooms), pusht (gym-pusht, optional extra)."""
from __future__ import annotations

from typing import Any

from .base import Env, check_action, replay

__all__ = ["ENVS", "Env", "check_action", "make_env", "replay"]

ENVS = ("panworld", "tworooms", "fourrooms", "pusht")


def make_env(name: str, **kwargs: Any) -> Env:
    """The environment ``name`` (see ``ENVS``) built with ``kwargs``."""
    if name == "panworld":
        from .panworld import PanWorld

        return PanWorld(**kwargs)
    if name == "tworooms":
        from .rooms import TwoRooms

        return TwoRooms(**kwargs)
    if name == "fourrooms":
        from .rooms import FourRooms

        return FourRooms(**kwargs)
    if name == "pusht":
        from .pusht import PushT

        return PushT(**kwargs)
    raise ValueError(f"unknown environment {name!r}; choose from {', '.join(ENVS)}")
