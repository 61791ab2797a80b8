"""MPPI (TD-MPC2's planner): the refit math, warm start, masks, seeding and batching, and `pwmctl eval --planner`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import run, run_json

from pwm_core.config import ConfigError
from pwm_core.errors import PwmError
from pwm_core.evaluate import evaluate
from pwm_core.nn import Actor, CriticEnsemble, WorldModel, WorldModelConfig
from pwm_core.plan import MPPI, MPPIConfig, PlannerActor, PolicyPrior, WorldModelPrior, refit, sample_elite, warm_start
from pwm_core.train.extract import ExtractConfig, Extractor, Policy

SMALL = MPPIConfig(iterations=3, num_samples=64, num_elites=8, num_pi_trajs=4)


def tiny_world_model(
    seed: int = 0, obs_dim: int = 5, action_dims=(1, 3), names=("a", "b"), lengths=(500, 100)
) -> WorldModel:
    """Two tasks with 1 and 3 of 3 action dims; reward and Q output layers re-drawn so values differ."""
    torch.manual_seed(seed)
    cfg = WorldModelConfig(
        obs_dim=obs_dim,
        act_dim=max(action_dims),
        action_dims=list(action_dims),
        episode_lengths=list(lengths),
        task_names=list(names),
        task_dim=4,
        enc_dim=16,
        num_enc_layers=2,
        mlp_dim=16,
        latent_dim=16,
        num_q=3,
    )
    wm = WorldModel(cfg)
    with torch.no_grad():
        wm._reward[-1].weight.normal_(0, 1.0)
        wm._Qs.params[-1].weight.normal_(0, 1.0)
    return wm


class Toy(nn.Module):
    """Identity encoder and dynamics: z = obs for ever."""

    def __init__(self, act_dim: int = 2):
        super().__init__()
        self.register_buffer("action_masks", torch.ones(1, act_dim))

    def encode(self, obs, task):
        return obs

    def next(self, z, a, task):
        return z


class ToyPrior:
    """Reward -(a - 0.3)^2 summed over dims, no discount, zero terminal value; the prior proposes a constant."""

    value_heads = 0

    def __init__(self, proposal: float = -0.8):
        self.proposal = proposal

    def action(self, z, task, eps):
        return torch.full((z.shape[0], 2), self.proposal)

    def reward(self, z, a, task):
        return -(a - 0.3).square().sum(-1, keepdim=True)

    def discount(self, task):
        return torch.ones(task.shape[0], 1)

    def value(self, z, task, eps, heads):
        return torch.zeros(z.shape[0], 1)


# ------------------------------------------------------------------------------------ pure math
def test_refit_weights_the_elites_by_softmax_of_temperature_times_value():
    actions = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)  # B=1, N=3, H=1, A=1
    value = torch.tensor([[0.0, 1.0, 2.0]])
    out = refit(actions, value, num_elites=2, temperature=0.5, min_std=1e-3, max_std=2.0)
    w = 1 / (1 + math.exp(-0.5))  # elites 1.0 (value 2) and 0.5 (value 1): weights w, 1 - w
    assert out.elites.flatten().tolist() == [1.0, 0.5]
    assert out.weights[0].tolist() == pytest.approx([w, 1 - w])
    assert out.mean.item() == pytest.approx(w * 1.0 + (1 - w) * 0.5)
    assert out.std.item() == pytest.approx(0.5 * math.sqrt(w * (1 - w)))


def test_refit_clamps_the_std_and_masks_padded_dims():
    same = torch.full((1, 4, 2, 2), 0.4)  # every elite identical: std 0 -> min_std
    out = refit(same, torch.zeros(1, 4), 4, 0.5, min_std=0.05, max_std=2.0, mask=torch.tensor([[1.0, 0.0]]))
    assert out.std[..., 0].tolist() == [[pytest.approx(0.05)] * 2] and out.std[..., 1].tolist() == [[0.0, 0.0]]
    assert out.mean[..., 0].tolist() == [[pytest.approx(0.4)] * 2] and out.mean[..., 1].tolist() == [[0.0, 0.0]]
    spread = torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)  # std 1 -> max_std
    assert refit(spread, torch.zeros(1, 2), 2, 0.5, min_std=0.05, max_std=0.3).std.item() == pytest.approx(0.3)


def test_warm_start_shifts_the_previous_mean_and_resets_at_an_episode_start():
    prev = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1).repeat(2, 1, 1)  # B=2, H=3, A=1
    mean = warm_start(prev, torch.tensor([False, True]))
    assert mean[0].flatten().tolist() == [2.0, 3.0, 0.0]
    assert mean[1].flatten().tolist() == [0.0, 0.0, 0.0]


def test_sample_elite_draws_with_the_weights():
    weights = torch.tensor([0.7, 0.2, 0.1, 0.0]).repeat(20_000, 1)
    picks = sample_elite(weights, torch.rand(weights.shape, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    assert freq[:3].tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.015) and freq[3] == 0


def test_config_validation_and_sample_scaling():
    assert MPPIConfig().to_dict() == {
        "iterations": 6,
        "num_samples": 512,
        "num_elites": 64,
        "num_pi_trajs": 24,
        "horizon": 3,
        "temperature": 0.5,
        "min_std": 0.05,
        "max_std": 2.0,
        "eval_mode": True,
        "seed": 0,
        "amp": None,
    }
    small = MPPIConfig().with_samples(32)
    assert (small.num_samples, small.num_elites, small.num_pi_trajs) == (32, 4, 2)
    with pytest.raises(ConfigError, match="num_elites"):
        MPPI(Toy(), MPPIConfig(num_samples=32))


# ------------------------------------------------------------------------------------- planning
def test_mppi_converges_to_the_optimum_of_a_toy_problem():
    planner = MPPI(Toy(), MPPIConfig(), ToyPrior(proposal=-0.8))  # TD-MPC2's defaults, a misleading prior
    a = planner.plan(torch.zeros(1, 3), 0, first=True)
    assert planner.mean[0].numpy() == pytest.approx(np.full((3, 2), 0.3), abs=0.03)  # every step of the plan
    assert a.numpy() == pytest.approx(np.full((1, 2), 0.3), abs=0.1)


def test_a_prior_trajectory_at_the_optimum_is_the_only_elite():
    cfg = MPPIConfig(iterations=1, num_samples=64, num_elites=1, num_pi_trajs=4)
    a = MPPI(Toy(), cfg, ToyPrior(proposal=0.3)).plan(torch.zeros(1, 3), 0)
    assert a.tolist() == [[pytest.approx(0.3, abs=1e-7)] * 2]


def test_padded_action_dims_stay_zero():
    cfg = MPPIConfig(**{**SMALL.to_dict(), "eval_mode": False})  # exploration noise too
    planner = MPPI(tiny_world_model(), cfg)
    a = planner.plan(torch.randn(4, 5), torch.tensor([0, 0, 1, 1]), first=True)
    assert (a[:2, 1:] == 0).all() and (a[2:] != 0).all() and (a.abs() <= 1).all()
    assert (planner.mean[:2, :, 1:] == 0).all()


def test_batched_plans_equal_single_plans_with_the_same_seeds():
    wm, obs, tasks = tiny_world_model(), torch.randn(3, 5), torch.tensor([0, 1, 1])
    batched = MPPI(wm, SMALL)
    batched.seed([0, 1, 2], [10, 11, 12])
    steps = [batched.plan(obs, tasks, first=True), batched.plan(obs + 0.1, tasks)]  # the second is warm-started
    for b in range(3):
        single = MPPI(wm, SMALL)
        single.seed([0], [10 + b])
        alone = [
            single.plan(obs[b : b + 1], tasks[b : b + 1], first=True),
            single.plan(obs[b : b + 1] + 0.1, tasks[b : b + 1]),
        ]
        for together, one in zip(steps, alone):
            torch.testing.assert_close(together[b : b + 1], one, atol=1e-4, rtol=0)
        torch.testing.assert_close(batched.mean[b], single.mean[0], atol=1e-4, rtol=0)
    assert not torch.allclose(steps[0][1], steps[0][2])  # same task, other obs and seed: another plan


def test_plans_are_reproducible_from_the_seed():
    wm, obs = tiny_world_model(), torch.randn(2, 5)
    plan = lambda cfg: MPPI(wm, cfg).plan(obs, 1, first=True)  # noqa: E731
    assert torch.equal(plan(SMALL), plan(SMALL))
    assert not torch.equal(plan(SMALL), plan(MPPIConfig(**{**SMALL.to_dict(), "seed": 1})))


def test_world_model_prior_samples_like_world_model_pi():
    wm = tiny_world_model()
    z, task = torch.randn(6, 16), torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected, _ = wm.pi(z, task)
        torch.manual_seed(3)
        eps = torch.randn(6, 3)
    torch.testing.assert_close(WorldModelPrior(wm).action(z, task, eps), expected)


def test_policy_prior_plans_with_the_actor_and_critics():
    wm = tiny_world_model()
    extractor = Extractor(
        ExtractConfig(batch_size=4, horizon=2, return_states=2, device="cpu"), wm, 0, lambda: torch.randn(4, 5)
    )
    policy = Policy.from_extractor(extractor)
    prior = PolicyPrior.from_policy(wm, policy)
    assert prior.gamma == 0.99 and prior.actor is not policy.actor  # copies: the policy stays whole
    a = MPPI(wm, SMALL, prior).plan(torch.randn(2, 5), 0, first=True)
    assert a.shape == (2, 3) and (a[:, 1:] == 0).all()
    with pytest.raises(PwmError, match="not extracted from this world model"):
        PolicyPrior.from_policy(tiny_world_model(seed=1), policy)
    direct = PolicyPrior(wm, Actor(16, 3), CriticEnsemble(16), gamma=0.9)
    assert direct.discount(torch.tensor([0, 1])).tolist() == [[pytest.approx(0.9)]] * 2


class Recorder:
    """Wraps an episodic actor and records each env's actions, keyed by the episode's first observation."""

    episodic = True

    def __init__(self, actor):
        self.actor, self.actions, self._key = actor, {}, {}

    def __call__(self, obs, specs, envs, first):
        a = self.actor(obs, specs, envs, first)
        for i, env in enumerate(envs.tolist()):
            if first[i]:
                self._key[env] = tuple(np.round(obs[i], 6).tolist())
            self.actions.setdefault(self._key[env], []).append(a[i].copy())
        return a


def test_planner_actor_results_do_not_depend_on_batching():
    """Seeds follow the episode, not the env's row: batched and alone plan the same first actions.

    Only the first steps are compared: matmuls over other batch shapes round differently (and differently on
    Intel and AMD), and a closed loop over 100 steps of physics amplifies that into different returns.
    """
    wm = tiny_world_model(obs_dim=39, action_dims=(4,), names=("mw-reach",), lengths=(100,))
    cfg = MPPIConfig(iterations=1, num_samples=8, num_elites=2, num_pi_trajs=2, horizon=2)

    def run_with(**kw):
        actor = Recorder(PlannerActor(MPPI(wm, cfg), ["mw-reach"]))
        return actor, evaluate({"mppi": actor}, ["mw-reach"], [0, 1], obs_dim=39, act_dim=4, **kw)

    (alone, _), (together, result) = run_with(envs_per_worker=1), run_with()
    assert len(together.actions) == 2 and alone.actions.keys() == together.actions.keys()
    for key, actions in together.actions.items():
        first = np.stack(actions[:3])
        np.testing.assert_allclose(np.stack(alone.actions[key][:3]), first, atol=1e-3, rtol=0)
    a0, a1 = (np.stack(v[:3]) for v in together.actions.values())
    assert np.abs(a0 - a1).max() > 1e-2  # other seed, other goal: another plan
    latency = result.latency["mppi"]
    assert latency.calls == 99 and len(latency.call_ms) == 99 and latency.percentile_ms(95) > 0


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", "mw-reach", "-n", "2", "--name", "tiny")
    run(
        home,
        "pretrain",
        "--tasks",
        "mw-reach",
        "--size",
        "1M",
        "--batch-size",
        "8",
        "--horizon",
        "3",
        "--steps",
        "4",
        "--set",
        "val_every=4",
        "--set",
        "val_batches=1",
        "--name",
        "wm",
    )
    run(
        home,
        "extract",
        "mw-reach",
        "--batch-size",
        "8",
        "--set",
        "horizon=4",
        "--set",
        "return_states=4",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--eval-episodes",
        "1",
    )
    return home


def test_eval_with_mppi_reports_both_latencies(home):
    doc = run_json(
        home,
        "eval",
        "policy/mw-reach",
        "--planner",
        "mppi",
        "--seeds",
        "2",
        "--mppi-iterations",
        "2",
        "--mppi-samples",
        "32",
        "--reps",
        "100",
    )
    labels = ["policy/mw-reach:v1", "policy/mw-reach:v1+mppi"]
    assert list(doc["summaries"]) == labels and doc["comparison"]["pairs"][0]["x"] == labels[0]
    for label in labels:
        t = doc["latency_ms"][label]
        assert t["calls"] == 99 and 0 < t["p50_ms_per_call"] <= t["p95_ms_per_call"]
    planner = doc["planner"]
    assert planner["prior"] == "wm" and planner["world_models"] == {"policy/mw-reach:v1": "worldmodel/wm:v1"}
    assert (planner["config"]["iterations"], planner["config"]["num_samples"], planner["config"]["num_elites"]) == (
        2,
        32,
        4,
    )
    report = run_json(home, "show", doc["report"])
    assert report["parents"] == ["policy/mw-reach:v1", "worldmodel/wm:v1"]
    raw = json.loads((Path(report["path"]) / "results.json").read_text())
    assert set(raw["latency_ms"]) == set(labels) and len(raw["episodes"][labels[1]]) == 2


def test_eval_with_the_policy_as_mppi_prior_prints_a_latency_table(home):
    out = run(
        home,
        "eval",
        "policy/mw-reach",
        "--planner",
        "mppi",
        "--planner-prior",
        "policy",
        "--seeds",
        "1",
        "--mppi-iterations",
        "1",
        "--mppi-samples",
        "16",
        "--mppi-horizon",
        "2",
        "--reps",
        "100",
    ).stdout
    table = out[out.index("act latency") :]
    assert "| policy/mw-reach:v1 | 99 |" in table and "| policy/mw-reach:v1+mppi | 99 |" in table
    assert "p95" in table


def test_eval_planner_bad_input_is_one_line(home):
    for args, word in (
        (["random", "--tasks", "mw-reach", "--planner", "mppi"], "name a policy"),
        (["policy/mw-reach", "--planner", "cem"], "--planner"),
        (["policy/mw-reach", "--planner", "mppi", "--mppi-set", "num_elites=999"], "num_elites"),
    ):
        result = run(home, "eval", *args, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr
