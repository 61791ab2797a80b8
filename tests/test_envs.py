"""Environment layer: task dims, TD-MPC2 wrapping (action repeat, episode length, padding),
seeding, the vector env, and the custom tasks' reward functions."""

from __future__ import annotations

import time

import numpy as np
import pytest
from dm_control import suite

from pwm_core.envs import PaddedEnv, VectorEnv, make_env, random_action
from pwm_core.envs.custom import ball_in_cup, cheetah, hopper, pendulum, walker
from pwm_core.errors import EnvError
from pwm_core.tasks import MT80, UnknownTaskError, get_task

SAMPLE_TASKS = [
    "walker-walk", "cheetah-run", "cup-catch", "finger-turn-easy",
    "walker-run-backwards", "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy",
    "cup-spin", "pendulum-spin", "mw-reach", "mw-assembly",
]  # fmt: skip


def _rollout(env, steps: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    rewards = []
    for _ in range(steps):
        obs, reward, done, info = env.step(random_action(env.spec, rng))
        assert obs.shape == (env.spec.obs_dim,) and obs.dtype == np.float32
        assert np.isfinite(reward) and np.all(np.isfinite(obs))
        assert isinstance(info["success"], float)
        rewards.append(reward)
    return rewards


# --- dims, episodes, action repeat, seeding -----------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_TASKS)
def test_dims_match_task_table(name):
    env = make_env(name, seed=0)
    obs = env.reset()
    assert obs.shape == (get_task(name).obs_dim,) and obs.dtype == np.float32
    _rollout(env, 3)
    env.close()


def test_unknown_task_suggests_a_name():
    with pytest.raises(UnknownTaskError, match="walker-walk"):
        make_env("walker-wlak")


def test_dmc_episode_is_500_agent_steps():
    env = make_env("pendulum-swingup", seed=0)
    env.reset()
    a = np.zeros(1)
    dones = [env.step(a)[2] for _ in range(500)]
    assert dones[-1] and not any(dones[:-1])
    assert env.physics.data.time == pytest.approx(1000 * 0.02)  # = dm_control's own end
    with pytest.raises(EnvError, match="reset"):
        env.step(a)


def test_metaworld_episode_is_100_agent_steps():
    env = make_env("mw-reach", seed=0)
    env.reset()
    a = np.zeros(4)
    dones = [env.step(a)[2] for _ in range(100)]
    assert dones[-1] and not any(dones[:-1])
    assert env._env.curr_path_length == 1 + 2 * 100  # the discarded zero step + action repeat 2


def _flat(time_step) -> np.ndarray:
    return np.concatenate(list(time_step.observation.values())).astype(np.float32)


def test_action_repeat_sums_two_dm_control_rewards():
    env = make_env("cheetah-run", seed=3)
    raw = suite.load("cheetah", "run", task_kwargs={"random": 3}, visualize_reward=False)
    np.testing.assert_array_equal(env.reset(), _flat(raw.reset()))
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, 6)
        obs, reward, _, _ = env.step(a)
        first, second = raw.step(a), raw.step(a)
        assert reward == pytest.approx(first.reward + second.reward)
        np.testing.assert_array_equal(obs, _flat(second))


@pytest.mark.parametrize("name", ["walker-walk", "cup-spin", "mw-reach"])
def test_same_seed_same_first_obs(name):
    first = [make_env(name, seed=s).reset() for s in (7, 7, 8)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_metaworld_goal_resampled_every_reset():
    env = make_env("mw-reach", seed=0)
    goals = [env.reset()[-3:] for _ in range(2)]  # last 3 entries: goal xyz
    assert not np.allclose(goals[0], goals[1])


# --- padding ------------------------------------------------------------------------------------


def test_padded_env_pads_obs_and_ignores_padded_action_dims():
    padded, plain = PaddedEnv(make_env("cup-spin", seed=1), 39, 6), make_env("cup-spin", seed=1)
    obs = padded.reset()
    assert obs.shape == (39,) and not obs[8:].any()
    np.testing.assert_array_equal(obs[:8], plain.reset())
    a = np.array([0.3, -0.7, 5.0, 5.0, 5.0, 5.0], dtype=np.float32)  # junk in the padded dims
    obs, reward, _, _ = padded.step(a)
    plain_obs, plain_reward, _, _ = plain.step(a[:2])
    np.testing.assert_array_equal(obs[:8], plain_obs)
    assert reward == plain_reward and not obs[8:].any()
    with pytest.raises(EnvError):
        padded.step(a[:2])
    with pytest.raises(EnvError):
        PaddedEnv(plain, obs_dim=4, act_dim=6)


def test_random_action_is_zero_in_padded_dims():
    rng = np.random.default_rng(0)
    a = np.stack([random_action(get_task("cup-spin"), rng, act_dim=6) for _ in range(100)])
    assert a.shape == (100, 6) and a.dtype == np.float32
    assert not a[:, 2:].any() and np.abs(a[:, :2]).max() <= 1 and a[:, :2].std() > 0.3
    assert random_action(get_task("walker-walk"), rng).shape == (6,)


# --- vector env ---------------------------------------------------------------------------------

VEC_TASKS, VEC_SEEDS = ["pendulum-swingup", "cup-spin", "mw-reach"], [0, 1, 2]


def _drive(venv: VectorEnv, steps: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [venv.reset()]
    for _ in range(steps):
        actions = np.stack([random_action(s, rng, venv.act_dim) for s in venv.specs])
        out.extend(venv.step(actions))
    out.append(venv.reset([2, 0]))
    return out


def test_vector_env_workers_match_in_process():
    with VectorEnv(VEC_TASKS, VEC_SEEDS, obs_dim=39, act_dim=6, workers=1) as venv:
        expected = _drive(venv)
    with VectorEnv(VEC_TASKS, VEC_SEEDS, obs_dim=39, act_dim=6, workers=2) as venv:
        # An error inside a worker names its task; the vector env stays usable afterwards.
        with pytest.raises(EnvError, match="pendulum-swingup: step\\(\\) needs a reset"):
            venv.step(np.zeros((3, 6)))
        got = _drive(venv)
        assert got[0].shape == (3, 39) and got[0].dtype == np.float32 and got[-1].shape == (2, 39)
        assert got[2].dtype == np.float32 and got[3].dtype == bool and got[4].dtype == np.float32
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_vector_env_construction_error_names_task():
    with pytest.raises(EnvError, match="walker-walk needs obs_dim >= 24"):
        VectorEnv(["walker-walk"], [0], obs_dim=3, act_dim=6, workers=2)
    with pytest.raises(UnknownTaskError):
        VectorEnv(["walker-wlak"], [0], obs_dim=24, act_dim=6, workers=2)


# --- custom tasks: models and reward functions (hand-computed values) ---------------------------


def test_custom_models_follow_spec():
    assert make_env("walker-walk-backwards").physics.named.model.geom_size["floor", 0] == 500
    assert make_env("cheetah-run-back").physics.named.model.geom_size["ground", 0] == 200
    env = make_env("reacher-three-hard")
    env.reset()
    model = env.physics.named.model
    np.testing.assert_allclose(np.rad2deg(model.jnt_range[["shoulder1", "wrist"]]), [[-80, 80]] * 2)
    assert model.geom_size["target", 0] == 0.015 and list(model.actuator_gear[:, 0]) == [0.05] * 3


def test_walker_backwards_reward():
    assert walker.backwards_reward(1.2, 1.0, -1.0, move_speed=1) == pytest.approx(1.0)
    assert walker.backwards_reward(1.2, 1.0, -0.5, move_speed=1) == pytest.approx(3.5 / 6)
    assert walker.backwards_reward(1.2, 1.0, 1.0, move_speed=1) == pytest.approx(1 / 6)
    # height at the margin -> 0.1 (gaussian), lying flat -> upright 0.5: stand (0.3 + 0.5) / 4
    assert walker.backwards_reward(0.6, 0.0, -8.0, move_speed=8) == pytest.approx(0.2)


def test_cheetah_rewards():
    assert cheetah.run_backwards_reward(-8.0) == 1.0
    assert cheetah.run_backwards_reward(-4.0) == pytest.approx(0.5)
    assert cheetah.run_backwards_reward(3.0) == 0.0
    assert cheetah.one_foot_reward(1.2, 1.2, 6.0) == pytest.approx(1.0)
    # torso at margin 0.1, foot up 1: up = (3 + 0.2) / 5; speed 3 = S/2 -> 0.5
    assert cheetah.one_foot_reward(0.6, 1.2, 3.0) == pytest.approx(0.64 * 3.5 / 6)
    # back: mean height 0.6 -> 0.1; front: mean 1.2 -> 1; speed 0 -> 1
    assert cheetah.jump_reward(0.6, 0.6, 1.8, 0.0) == pytest.approx((1.5 / 6 + 1) / 2)
    assert cheetah.jump_reward(1.2, 1.2, 1.2, 0.75) == pytest.approx(5.5 / 6)


def test_hopper_hop_backwards_reward():
    assert hopper.hop_backwards_reward(1.0, -1.0) == 1.0
    assert hopper.hop_backwards_reward(1.0, -0.5) == pytest.approx(0.5)
    assert hopper.hop_backwards_reward(1.0, 0.5) == 0.0
    assert hopper.hop_backwards_reward(0.5, -3.0) == 0.0  # standing is an indicator


def test_cup_spin_reward():
    assert ball_in_cup.spin_reward(np.array([0.0, 0.6]), np.array([6.0, 0.0]), in_target=1.0) == 0.0
    # distance 0.25 = 0.5 - margin -> 0.5; speed 6 -> 1
    assert ball_in_cup.spin_reward(np.array([0.15, 0.2]), np.array([0.0, -6.0]), 0.0) == pytest.approx(2.5 / 3)
    assert ball_in_cup.spin_reward(np.array([0.5, 0.0]), np.array([-3.0, 0.0]), 0.0) == pytest.approx(2 / 3)


def test_pendulum_spin_reward():
    assert pendulum.spin_reward(-9.5) == 1.0
    assert pendulum.spin_reward(4.5) == pytest.approx(0.5)
    assert pendulum.spin_reward(0.0) == 0.0


# --- the full task table -----------------------------------------------------------------------


@pytest.mark.slow
def test_every_mt80_task_builds_and_steps():
    start = time.perf_counter()
    for name in MT80:
        env = make_env(name, seed=0)
        assert env.reset().shape == (get_task(name).obs_dim,), name
        _rollout(env, 5)
        env.close()
    print(f"\nbuilt and stepped all {len(MT80)} tasks in {time.perf_counter() - start:.1f} s")
