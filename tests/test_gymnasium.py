"""Every task as a gymnasium env (pwm_core.envs.gym): gymnasium's own checker, seeding, time limits, ids."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pwm_core.envs import make_env
from pwm_core.envs.gym import gym_id, make_gym_env, register_envs
from pwm_core.tasks import MT80, get_task

# gymnasium advises finite Box bounds; MuJoCo observations (velocities) have none, as in gymnasium's own envs.
UNBOUNDED_OBS = "ignore:.*Box observation space (minimum|maximum) value is"


@pytest.mark.filterwarnings(UNBOUNDED_OBS)
@pytest.mark.parametrize("task", ["walker-walk", "cheetah-run-backwards", "mw-reach"])  # DMC, custom, Meta-World
def test_env_passes_gymnasium_check_env(task):
    env = make_gym_env(task)
    check_env(env, skip_render_check=True)  # rendering needs headless OpenGL chosen before MuJoCo loads
    spec = get_task(task)
    assert env.observation_space.shape == (spec.obs_dim,) and env.observation_space.dtype == np.float32
    assert (
        env.action_space.shape == (spec.act_dim,)
        and (env.action_space.low == -1).all()
        and (env.action_space.high == 1).all()
    )


def test_same_seed_same_first_obs_and_the_env_seed_of_pwm_core():
    env = make_gym_env("cartpole-balance", seed=3)
    first, info = env.reset()
    assert first.dtype == np.float32 and info == {}
    second, _ = env.reset()  # the next episode of the same seeded env
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(env.reset(seed=3)[0], first)
    np.testing.assert_array_equal(env.reset()[0], second)
    assert not np.array_equal(env.reset(seed=4)[0], first)
    native = make_env("cartpole-balance", seed=3)  # reset(seed=s) is the project's env built with seed s
    np.testing.assert_array_equal(native.reset(), first)


def test_meta_world_episode_ends_as_a_truncation_after_its_time_limit():
    env = make_gym_env("mw-reach", seed=0)
    env.reset()
    for t in range(1, get_task("mw-reach").episode_length + 1):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert terminated is False and truncated is (t == 100), t
        assert isinstance(reward, float) and isinstance(info["success"], float)
    env.close()
    env.close()  # closing twice is allowed


def test_step_before_reset_is_one_clear_error():
    from pwm_core.errors import EnvError

    with pytest.raises(EnvError, match="reset"):
        make_gym_env("walker-walk").step(np.zeros(6, np.float32))


@pytest.mark.filterwarnings(UNBOUNDED_OBS)
def test_registered_ids_make_every_task_with_its_time_limit():
    ids = register_envs()
    assert ids == register_envs()  # idempotent: no re-registration warnings
    assert {gym_id(t) for t in MT80} <= set(ids) and "pwm/walker-walk-v0" in gymnasium.registry
    env = gymnasium.make("pwm/walker-walk-v0")
    assert env.spec.max_episode_steps == 500 and env.unwrapped.task.name == "walker-walk"
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, make_gym_env("walker-walk").reset(seed=0)[0])
    env.close()
