"""panworld: a camera window panning over a real photo, the embedded environment that needs no package.

The photos ship inside scikit-image and are all CC0 or public domain (licences as scikit-image's own
docstrings state them); all are textured, since a blank crop would make the position ambiguous. The state is
the window's continuous top-left corner (x, y); an action is a 2-D velocity in ``[-1, 1]^2`` times
``max_speed`` pixels; the window stops at the photo's border. Success: within ``tolerance`` pixels of
the goal position."""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .base import PointGoalEnv, check_action

# name -> licence, as given in scikit-image's docstrings
PHOTOS = {
    "astronaut": "public domain (NASA)",
    "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "hubble_deep_field": "public domain (NASA)",
}


@functools.cache
def load_photo(name: str, size: int, channels: int) -> np.ndarray:
    """scikit-image photo ``name``: centre square crop resized to ``size``, uint8 ``[channels, size, size]``."""
    if name not in PHOTOS:
        raise ValueError(f"unknown panworld photo {name!r}; choose from {sorted(PHOTOS)} (CC0 / public domain)")
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
    t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    t = F.interpolate(t, size=(size, size), mode="area")[0]
    if channels == 1:
        t = t.mean(0, keepdim=True)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


class PanWorld(PointGoalEnv):
    """Observation: the ``view x view`` window at the rounded position, uint8 ``[channels, view, view]``.
    ``reset(seed)`` draws the photo, the start and a goal at distance ``goal_range`` (pixels)."""

    action_dim = 2
    distance_buckets = (0.0, 16.0, 32.0)  # from 32 px on (the view), the goal window is mostly new ground

    def __init__(self, view: int = 32, world: int = 96, channels: int = 3, max_speed: float = 4.0,
                 tolerance: float = 4.0, max_steps: int = 30, goal_range: tuple[float, float] = (8.0, 40.0),
                 photos: tuple[str, ...] = tuple(PHOTOS)):
        if view >= world:
            raise ValueError(f"the view ({view}) must be smaller than the world ({world})")
        self.view, self.world, self.channels = view, world, channels
        self.max_speed, self.tolerance, self.max_steps, self.goal_range = max_speed, tolerance, max_steps, goal_range
        self.photos = [load_photo(p, world, channels) for p in photos]
        self.obs_shape = (channels, view, view)
        self.limit = float(world - view)
        self.pos = self.goal = np.zeros(2)
        self.image = self.photos[0]

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        self.image = self.photos[int(rng.integers(len(self.photos)))]
        lo, hi = self.goal_range
        while True:  # rejection: both corners inside the world, the goal at the drawn distance
            self.pos = rng.uniform(0, self.limit, 2)
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(lo, hi)
            self.goal = self.pos + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all((self.goal >= 0) & (self.goal <= self.limit)):
                break
        return self.render()

    def step(self, action: np.ndarray) -> np.ndarray:
        a = check_action(action, self.action_dim)
        self.pos = np.clip(self.pos + self.max_speed * a, 0.0, self.limit)
        return self.render()

    def observe(self, pos: np.ndarray) -> np.ndarray:
        x, y = np.rint(pos).astype(int)
        return self.image[:, y:y + self.view, x:x + self.view].copy()
