"""The Warp simulators: exact gradients (finite differences, float64), equal to their torch twins,
batch-independent, cached kernels, and the env interface."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pwm_core.diffsim import BallWall, CartPole, DoublePendulum, analytic_landscape, make_sim
from pwm_core.diffsim.env import DIFFSIM_TASKS, make_diffsim_env
from pwm_core.errors import EnvError, PwmError

CONTROLLED = ["cartpole-swingup", "double-pendulum"]
T = 20  # steps in the short rollouts below


def _problem(name: str, n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sim = make_sim(name)
    state0 = sim.initial_state(n, g, dtype=dtype)
    actions = (torch.rand(T, n, sim.act_dim, generator=g, dtype=dtype) * 2 - 1) * 0.5  # inside the clip
    return state0, actions


def _loss(states: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """A scalar touching every reward and the final state."""
    return rewards.sum() + 0.1 * states[-1].pow(2).sum()


def _closed_loop_loss(sim, state0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Step by step (WarpStep's adjoint launches), as a torch policy would drive it."""
    s, rewards = state0, []
    for a in actions:
        s, r = sim.step(s, a)
        rewards.append(r)
    return torch.stack(rewards).sum() + 0.1 * s.pow(2).sum()


@pytest.mark.parametrize("name", CONTROLLED)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-11)])
def test_warp_rollout_equals_torch_twin(name, dtype, tol):
    state0, actions = _problem(name, 16, dtype)
    s_wp, r_wp = make_sim(name).rollout(state0, actions)
    s_th, r_th = make_sim(name, "torch").rollout(state0, actions)
    assert s_wp.dtype == dtype and s_wp.shape == (T + 1, 16, 4) and r_wp.shape == (T, 16)
    scale = r_th.abs().max()
    torch.testing.assert_close(s_wp, s_th, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(r_wp, r_th, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("name", CONTROLLED)
def test_gradients_match_central_finite_differences_float64(name):
    state0, actions = _problem(name, 4, torch.float64)
    sim = make_sim(name)
    s0, a = state0.clone().requires_grad_(), actions.clone().requires_grad_()
    g_a, g_s0 = torch.autograd.grad(_loss(*sim.rollout(s0, a)), (a, s0))

    def f(s0_: torch.Tensor, a_: torch.Tensor) -> float:
        with torch.no_grad():
            return _loss(*sim.rollout(s0_, a_)).item()

    eps = 1e-5
    for idx in [(0, 0, 0), (7, 1, 0), (T - 1, 3, 0)]:  # first, middle and last action
        e = torch.zeros_like(actions)
        e[idx] = eps
        fd = (f(state0, actions + e) - f(state0, actions - e)) / (2 * eps)
        assert g_a[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-6)
    for idx in [(0, 1), (2, 3)]:  # an angle and a rate of the start state
        e = torch.zeros_like(state0)
        e[idx] = eps
        fd = (f(state0 + e, actions) - f(state0 - e, actions)) / (2 * eps)
        assert g_s0[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", CONTROLLED)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_step_and_tape_gradients_equal_torch_autograd(name, dtype, tol):
    state0, actions = _problem(name, 8, dtype, seed=1)
    grads = {}
    for label, backend, closed_loop in (("step", "warp", True), ("tape", "warp", False), ("torch", "torch", True)):
        sim = make_sim(name, backend)
        s0, a = state0.clone().requires_grad_(), actions.clone().requires_grad_()
        loss = _closed_loop_loss(sim, s0, a) if closed_loop else _loss(*sim.rollout(s0, a))
        grads[label] = torch.autograd.grad(loss, (a, s0))
    for label in ("step", "tape"):
        for g, ref in zip(grads[label], grads["torch"]):
            assert ((g - ref).abs().max() / ref.abs().max()).item() < tol


@pytest.mark.parametrize("name", CONTROLLED)
def test_batched_and_single_env_agree(name):
    state0, actions = _problem(name, 6, torch.float32)
    sim = make_sim(name)
    s_batch, r_batch = sim.rollout(state0, actions)
    for i in (0, 5):
        s_one, r_one = sim.rollout(state0[i : i + 1], actions[:, i : i + 1])
        assert torch.equal(s_one[:, 0], s_batch[:, i]) and torch.equal(r_one[:, 0], r_batch[:, i])


def test_policy_gradient_flows_through_the_simulator():
    torch.manual_seed(0)
    sim = CartPole()
    policy = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Tanh())
    s = sim.initial_state(8, torch.Generator().manual_seed(0))
    ret = 0
    for _ in range(10):
        s, r = sim.step(s, policy(sim.observe(s)))
        ret = ret + r.mean()
    (-ret).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_unactuated_double_pendulum_conserves_energy_up_to_integrator_error(monkeypatch):
    """Semi-implicit Euler loses energy at O(h): 10x the substeps (twin only) -> about 10x less drift."""
    from pwm_core.diffsim import double_pendulum

    sim = DoublePendulum("torch")
    s0 = torch.tensor([[0.3, -0.5, 3.0, -4.0], [2.0, 1.0, -2.0, 5.0]], dtype=torch.float64)
    drift = {}
    for substeps in (4, 40):
        monkeypatch.setattr(double_pendulum, "SUBSTEPS", substeps)
        monkeypatch.setattr(double_pendulum, "H", double_pendulum.DT / substeps)
        states, _ = sim.rollout(s0, torch.zeros(60, 2, 1, dtype=torch.float64))
        e = sim.energy(states)
        drift[substeps] = (e - e[0]).abs().max().item()
    assert drift[40] < drift[4] / 7
    assert drift[40] < 0.02 * sim.energy(s0).abs().max().item()


def test_cartpole_hanging_at_rest_stays_and_force_pushes_the_cart():
    sim = CartPole()
    hanging = torch.tensor([[0.0, math.pi, 0.0, 0.0]], dtype=torch.float64)
    s, r = sim.step(hanging, torch.zeros(1, 1, dtype=torch.float64))
    torch.testing.assert_close(s, hanging, atol=1e-9, rtol=0)
    assert r.item() == pytest.approx(-(math.pi**2), rel=1e-6)
    s, _ = sim.step(hanging, torch.ones(1, 1, dtype=torch.float64))
    assert s[0, 2] > 0  # a positive force accelerates the cart towards +x


def test_actions_are_clipped_to_unit_range():
    sim = DoublePendulum()
    s0 = sim.initial_state(2, torch.Generator().manual_seed(0))
    a = torch.tensor([[1.0], [-1.0]])
    torch.testing.assert_close(sim.step(s0, a * 5)[0], sim.step(s0, a)[0])


def test_ball_wall_analytic_landscape_matches_the_official_figure():
    theta = torch.linspace(-math.pi, math.pi, 1000, dtype=torch.float64)
    J = -analytic_landscape(theta)
    assert J.min().item() == pytest.approx(-21.85, abs=0.01)
    assert theta[J.argmin()].item() == pytest.approx(0.123, abs=0.002)
    assert int((J == -5.0).sum()) == 265  # the wall plateau


def test_ball_wall_sim_is_discontinuous_and_ad_matches_finite_differences_in_free_flight():
    sim = BallWall()
    theta = torch.linspace(-math.pi, math.pi, 401, dtype=torch.float64)
    x = sim.throw(theta)
    assert ((x[1:] - x[:-1]).abs() > 1.0).sum() >= 5  # jumps where the wall starts or stops a throw
    assert 20.0 < x.max().item() < 22.0
    th = torch.tensor([0.6, 1.5, -2.8], dtype=torch.float64, requires_grad=True)  # over the wall / backwards
    (g,) = torch.autograd.grad(sim.throw(th).sum(), th)
    eps = 1e-6
    with torch.no_grad():
        fd = (sim.throw(th + eps) - sim.throw(th - eps)) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, -20.0 * torch.sin(th.detach()), rtol=1e-2, atol=1e-2)  # d/dth (20 cos th + 2)


def test_bad_shapes_and_names_are_user_errors():
    sim = CartPole()
    with pytest.raises(PwmError, match="action must have shape"):
        sim.step(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(PwmError, match="state must have shape"):
        sim.step(torch.zeros(3, 5), torch.zeros(3, 1))
    with pytest.raises(PwmError, match="float32 or float64"):
        sim.step(torch.zeros(3, 4, dtype=torch.float16), torch.zeros(3, 1))
    with pytest.raises(PwmError, match="unknown simulator"):
        make_sim("cartpole")


@pytest.mark.parametrize("name", list(DIFFSIM_TASKS))
def test_env_interface(name):
    env = make_diffsim_env(name, seed=3)
    spec = env.spec
    obs = env.reset()
    assert obs.shape == (spec.obs_dim,) and obs.dtype == np.float32
    rng = np.random.default_rng(0)
    done, steps, ret = False, 0, 0.0
    while not done:
        obs, reward, done, info = env.step(rng.uniform(-1, 1, spec.act_dim).astype(np.float32))
        steps, ret = steps + 1, ret + reward
        assert obs.shape == (spec.obs_dim,) and np.isfinite(obs).all() and info["success"] == 0.0
    assert steps == spec.episode_length and np.isfinite(ret)
    with pytest.raises(EnvError, match="reset"):
        env.step(np.zeros(spec.act_dim, np.float32))
    again = make_diffsim_env(name, seed=3)
    np.testing.assert_array_equal(again.reset(), make_diffsim_env(name, seed=3).reset())


def test_env_tasks_agree_with_the_task_table_once_registered():
    from pwm_core.tasks import TASKS

    for name, spec in DIFFSIM_TASKS.items():
        if name in TASKS:
            assert TASKS[name] == spec


def test_kernels_compile_once_then_load_from_the_cache(tmp_path):
    """Two fresh processes share a kernel cache: the first compiles the module, the second loads it."""
    script = (
        "import warp as wp\n"
        "from pwm_core.diffsim import ball_wall\n"
        "wp.config.log_level = wp.LOG_INFO\n"
        "wp.init()\n"
        "wp.load_module(ball_wall, device='cpu')\n"
    )
    env = {**os.environ, "WARP_CACHE_PATH": str(tmp_path / "warp-cache")}
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=120
        ).stdout
        for _ in range(2)
    ]
    lines = [[ln for ln in out.splitlines() if "Module pwm_core.diffsim.ball_wall" in ln] for out in outputs]
    assert len(lines[0]) == 1 and "(compiled)" in lines[0][0], outputs[0]
    assert len(lines[1]) == 1 and "(cached)" in lines[1][0], outputs[1]
    assert len(list((tmp_path / "warp-cache").glob("*/wp_pwm_core.diffsim.ball_wall_*"))) == 1


def test_shac_short_run_learns_through_simulator_gradients():
    from pwm_core.diffsim.shac import SHAC, SHACConfig

    cfg = SHACConfig(num_envs=16, epochs=12, critic_iterations=4)
    agent = SHAC(cfg)
    before = agent.evaluate(num_envs=8)
    metrics = [agent.epoch() for _ in range(cfg.epochs)]
    assert all(math.isfinite(m[k]) for m in metrics for k in ("actor_loss", "value_loss", "actor_grad_norm"))
    assert math.isfinite(metrics[-1]["episode_return"])  # 12 windows of 32 > one 240-step episode
    assert metrics[-1]["actor_lr"] < cfg.actor_lr  # the linear decay
    assert agent.evaluate(num_envs=8) > before + 1000  # the random-init policy drives the cart far away


def test_shac_actor_gradient_is_the_same_through_warp_and_the_torch_twin():
    from pwm_core.diffsim.shac import SHAC, SHACConfig

    cfg = SHACConfig(num_envs=4, horizon=8, critic_iterations=1)
    norms = [SHAC(cfg, CartPole(backend)).epoch()["actor_grad_norm"] for backend in ("warp", "torch")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-3)


def test_tape_rollout_backward_twice_with_retained_graph_gives_the_same_gradient():
    state0, actions = _problem("cartpole-swingup", 3, torch.float64)
    a = actions.clone().requires_grad_()
    loss = _loss(*make_sim("cartpole-swingup").rollout(state0, a))
    (g1,) = torch.autograd.grad(loss, a, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
