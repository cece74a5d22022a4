"""Push-T through the ``gym-pusht`` package (``pip install -e ".[envs]"``): a real task no one here wrote,
with its own success test (the T's coverage of the goal region >= 95 %). Our action ``[-1, 1]^2`` maps
to the agent's target position in the package's ``[0, 512]^2``; frames are resized to ``view``."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Env, check_action


def _import_pusht():
    try:
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium
    except ImportError as e:
        raise ImportError("the pusht environment needs gym-pusht: pip install -e \".[envs]\"") from e
    return gymnasium


class PushT(Env):
    action_dim = 2

    def __init__(self, view: int = 32, channels: int = 3, max_steps: int = 100):
        gymnasium = _import_pusht()
        self.env = gymnasium.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos", render_mode="rgb_array")
        self.view, self.channels, self.max_steps = view, channels, max_steps
        self.obs_shape = (channels, view, view)
        self._success = False

    def _to_obs(self, pixels: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().unsqueeze(0)
        t = F.interpolate(t, size=(self.view, self.view), mode="area")[0]
        if self.channels == 1:
            t = t.mean(0, keepdim=True)
        return t.round().clamp(0, 255).to(torch.uint8).numpy()

    def reset(self, seed: int) -> np.ndarray:
        obs, info = self.env.reset(seed=seed)
        self._success, self._pixels = bool(info["is_success"]), obs["pixels"]
        return self._to_obs(self._pixels)

    def step(self, action: np.ndarray) -> np.ndarray:
        a = check_action(action, self.action_dim)
        obs, _, _, _, info = self.env.step(((a + 1.0) * 256.0).astype(np.float32))
        self._success, self._pixels = bool(info["is_success"]), obs["pixels"]
        return self._to_obs(self._pixels)

    def render(self) -> np.ndarray:
        return self._to_obs(self._pixels)

    def goal_observation(self) -> np.ndarray:
        """The scene with the T placed on its goal pose (agent where it is), rendered and then undone."""
        u = self.env.unwrapped
        saved = [*u.agent.position, *u.block.position, u.block.angle]
        u._set_state(np.array([*u.agent.position, *u.goal_pose]))
        pixels = u._render(visualize=False) if hasattr(u, "_render") else u.render()
        u._set_state(np.array(saved))
        return self._to_obs(pixels)

    def goal_distance(self) -> float:
        u = self.env.unwrapped
        return float(np.linalg.norm(np.array(u.block.position) - np.array(u.goal_pose[:2])))

    def success(self) -> bool:
        return self._success
