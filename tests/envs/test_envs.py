"""Environments: deterministic for a seed, bad actions refused by name, goals and success that mean it;
collect writes rollouts the data set reads, with actions."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hjepa_fast.config import ConfigError
from hjepa_fast.data import build_dataset
from hjepa_fast.envs import make_env
from hjepa_fast.envs.collect import collect
from hjepa_fast.envs.panworld import PHOTOS, load_photo

HAS_PUSHT = importlib.util.find_spec("gym_pusht") is not None
ENVS = ["panworld", "tworooms", "fourrooms", pytest.param("pusht", marks=pytest.mark.skipif(
    not HAS_PUSHT, reason='gym-pusht is not installed: pip install -e ".[envs]"'))]


def rollout(env, seed: int, steps: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(123)
    frames = [env.reset(seed)]
    for _ in range(steps):
        frames.append(env.step(rng.uniform(-1, 1, env.action_dim)))
    return frames


@pytest.mark.parametrize("name", ENVS)
def test_deterministic_per_seed_and_shaped(name):
    env = make_env(name)
    a, b, c = rollout(env, 5), rollout(env, 5), rollout(env, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == env.obs_shape and a[0].dtype == np.uint8
    assert env.goal_observation().shape == env.obs_shape


@pytest.mark.parametrize("name", ENVS)
@pytest.mark.parametrize("action,message", [
    (np.zeros(3), r"shape \(2,\)"), (np.array([0.0, 1.5]), r"\[-1.0, 1.0\]"), (np.array([np.nan, 0.0]), "finite"),
])
def test_bad_actions_are_refused_clearly(name, action, message):
    env = make_env(name)
    env.reset(0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_panworld_goal_view_and_success():
    env = make_env("panworld")
    env.reset(3)
    assert not env.success() and env.goal_distance() >= env.goal_range[0]
    env.pos = env.goal.copy()
    assert env.success() and np.array_equal(env.render(), env.goal_observation())


def test_panworld_photos_are_textured():
    """A blank crop is ambiguous: every 32 px window of every photo must vary."""
    for name in PHOTOS:
        img = load_photo(name, 96, 3).astype(float)
        assert img.std() > 10, name
        windows = np.lib.stride_tricks.sliding_window_view(img.mean(0), (32, 32))[::16, ::16]
        assert windows.std(axis=(-1, -2)).min() > 3, f"{name} has a flat 32 px window"


def test_tworooms_wall_blocks_and_door_passes():
    env = make_env("tworooms")
    env.reset(0)
    env.pos = np.array([0.4, 0.1])
    for _ in range(5):
        env.step(np.array([1.0, 0.0]))
    assert env.pos[0] < 0.5  # the wall
    env.pos = np.array([0.4, 0.5])
    for _ in range(5):
        env.step(np.array([1.0, 0.0]))
    assert env.pos[0] > 0.5  # the door


def test_fourrooms_walls_block_and_each_door_passes():
    env = make_env("fourrooms")
    env.reset(0)
    moves = {  # (start, action, axis, must cross 0.5): a wall outside its doors, then each of the four doors
        "vertical wall": ([0.4, 0.1], [1.0, 0.0], 0, False), "horizontal wall": ([0.1, 0.4], [0.0, 1.0], 1, False),
        "lower-left door": ([0.4, 0.26], [1.0, 0.0], 0, True), "upper door": ([0.4, 0.74], [1.0, 0.0], 0, True),
        "left door": ([0.26, 0.4], [0.0, 1.0], 1, True), "right door": ([0.74, 0.6], [0.0, -1.0], 1, True),
    }
    for name, (start, action, axis, crosses) in moves.items():
        env.pos = np.array(start)
        for _ in range(5):
            env.step(np.array(action))
        moved_past = env.pos[axis] > 0.5 if action[axis] > 0 else env.pos[axis] < 0.5
        assert moved_past == crosses, name
    env.pos = np.array([0.4, 0.4])  # diagonal into the centre: both walls there, no door
    for _ in range(5):
        env.step(np.array([1.0, 1.0]))
    assert env.pos[0] < 0.5 and env.pos[1] < 0.5


def test_fourrooms_start_and_goal_are_in_diagonal_rooms():
    env = make_env("fourrooms")
    for seed in range(50):
        env.reset(seed)
        start_room, goal_room = (env.pos > 0.5), (env.goal > 0.5)
        assert np.all(start_room != goal_room), seed
        assert env.distance_buckets[0] <= env.goal_distance()
    env.pos = env.goal.copy()
    assert env.success() and np.array_equal(env.render(), env.goal_observation())


def test_collect_writes_rollouts_the_data_set_reads(tmp_path):
    out = collect("panworld", tmp_path / "r", episodes=3, steps=10, seed=1)
    ds = build_dataset("rollouts", "train", frames=8, size=32, channels=3, root=str(out), seed=0)
    assert len(ds) == 2 * (10 - 8 + 1)
    item = ds[(1, 7)]
    assert item["clip"].shape == (8, 3, 32, 32) and item["actions"].shape == (8, 2) and item["step"] == 7
    episode = np.load(out / "ep_00000.npz")
    assert np.array_equal(item["clip"].numpy(), episode["obs"][1:9])
    assert np.allclose(item["actions"].numpy(), episode["actions"][1:9])
    assert len(build_dataset("rollouts", "val", frames=8, size=32, channels=3, root=str(out), seed=0)) == 3
    with pytest.raises(ConfigError, match="model expects 16x16"):
        build_dataset("rollouts", "train", frames=8, size=16, channels=3, root=str(out), seed=0)
    with pytest.raises(ConfigError, match="clips of 16 frames need episodes of >= 16 steps, got 10"):
        build_dataset("rollouts", "train", frames=16, size=32, channels=3, root=str(out), seed=0)
    with pytest.raises(FileExistsError, match="already holds rollouts"):
        collect("panworld", out, episodes=1, steps=10)
