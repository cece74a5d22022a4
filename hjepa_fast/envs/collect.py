"""``hjepa collect``: random-exploration rollouts written to a folder that ``data.dataset=rollouts`` reads.

Layout: ``meta.json`` (env, obs shape, action_dim, episodes, steps) and one ``ep_NNNNN.npz`` per episode
holding ``obs`` uint8 ``[steps + 1, C, H, W]`` and ``actions`` float32 ``[steps, A]`` (action t moves
obs t to obs t + 1). Exploration holds a uniform random action for 1-4 steps: smoother paths cover more
ground than white noise, and an episode is a pure function of (seed, episode index)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import make_env


def collect(env_name: str, out: str | Path, episodes: int, steps: int, seed: int = 0,
            env_kwargs: dict[str, Any] | None = None) -> Path:
    out = Path(out)
    if (out / "meta.json").exists():
        raise FileExistsError(f"{out} already holds rollouts (meta.json); choose another --out")
    if episodes < 1 or steps < 1:
        raise ValueError(f"need episodes >= 1 and steps >= 1, got {episodes}, {steps}")
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(env_name, **(env_kwargs or {}))
    for ep in range(episodes):
        rng = np.random.default_rng((seed, ep))
        obs = [env.reset(int(rng.integers(2**31)))]
        actions, action, hold = [], None, 0
        for _ in range(steps):
            if hold == 0:
                action, hold = env.random_action(rng), int(rng.integers(1, 5))
            hold -= 1
            obs.append(env.step(action))
            actions.append(action)
        np.savez_compressed(out / f"ep_{ep:05d}.npz", obs=np.stack(obs), actions=np.asarray(actions, np.float32))
    meta = {"env": env_name, "obs_shape": list(env.obs_shape), "action_dim": env.action_dim,
            "episodes": episodes, "steps": steps, "seed": seed, "env_kwargs": env_kwargs or {}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out
