"""World-model pre-training: the pure math, the exact TD-MPC2 objective, learning, checkpoint/resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pwm_core.config import apply_overrides
from pwm_core.data import EpisodeWriter, WindowSampler, open_dataset
from pwm_core.nn import WorldModel, world_model_config
from pwm_core.nn.math import soft_ce
from pwm_core.tasks import resolve_tasks
from pwm_core.train import (
    PretrainConfig,
    Pretrainer,
    RunningScale,
    model_config,
    read_checkpoint,
    rho_weights,
    split_episodes,
    td_targets,
    world_model_loss,
)
from pwm_core.train.returns import percentile_range

TASKS = resolve_tasks("walker-walk,cartpole-swingup")  # obs 24 / 5, act 6 / 1: different padding
TINY = ["enc_dim=32", "mlp_dim=32", "latent_dim=16", "task_dim=8", "num_q=3"]


def tiny_model_config():
    return apply_overrides(world_model_config("1M", TASKS), TINY)


def tiny_config(**kw) -> PretrainConfig:
    return PretrainConfig(
        **{"batch_size": 32, "horizon": 4, "device": "cpu", "val_fraction": 0.2, "val_batches": 2, **kw}
    )


def write_linear_system(
    path, task: str, obs_dim: int, act_dim: int, episodes: int = 10, length: int = 30, seed: int = 0
):
    """o' = 0.9 o + 0.3 a (on the first act_dim entries), r = clip(1 - |o'_0|, 0, 1)."""
    rng = np.random.default_rng(seed)
    with EpisodeWriter.create(path, resolve_tasks(task)) as w:
        for _ in range(episodes):
            obs = np.zeros((length + 1, obs_dim), np.float32)
            obs[0] = rng.uniform(-1, 1, obs_dim)
            action = rng.uniform(-1, 1, (length, act_dim)).astype(np.float32)
            for t in range(length):
                obs[t + 1] = 0.9 * obs[t]
                obs[t + 1, :act_dim] += 0.3 * action[t]
            w.append_episode(obs, action, np.clip(1 - np.abs(obs[1:, 0]), 0, 1), task)
    return open_dataset(path)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return [
        write_linear_system(root / "walker.zarr", "walker-walk", 24, 6, seed=0),
        write_linear_system(root / "cartpole.zarr", "cartpole-swingup", 5, 1, seed=1),
    ]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: threads only add overhead, and the machine is shared
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- pure math
def test_rho_weights_are_powers_of_rho():
    assert torch.allclose(rho_weights(4, 0.5), torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert torch.allclose(rho_weights(16, 0.99)[-1], torch.tensor(0.99**15))


def test_td_targets_two_element_example():
    reward = torch.tensor([[1.0, 2.0]])  # H = 1, B = 2
    next_q = torch.tensor([[10.0, -4.0]])
    gamma = torch.tensor([0.99, 0.95])  # a DMC and a Meta-World task
    assert torch.allclose(td_targets(reward, next_q, gamma), torch.tensor([[1 + 9.9, 2 - 3.8]]))


def test_percentile_range_interpolates_linearly():
    # positions 0.05 * 3 = 0.15 and 0.95 * 3 = 2.85 between the sorted values 0, 1, 2, 3
    assert torch.isclose(percentile_range(torch.tensor([3.0, 0.0, 2.0, 1.0])), torch.tensor(2.7))


def test_running_scale_is_an_ema_of_the_clamped_5_95_range():
    scale = RunningScale(tau=0.01)
    assert scale.value.item() == 1.0
    scale.update(torch.arange(101.0))  # P5 = 5, P95 = 95
    assert scale.value.item() == pytest.approx(1 + 0.01 * (90 - 1))
    scale.update(torch.full((50,), 7.0))  # range 0 -> clamped to 1
    assert scale.value.item() == pytest.approx(1.89 + 0.01 * (1 - 1.89))
    assert torch.allclose(scale(torch.tensor([1.8811])), torch.tensor([1.0]))
    other = RunningScale(tau=0.01)
    other.load_state_dict(scale.state_dict())
    assert other.value.item() == scale.value.item()


# ------------------------------------------------------------------------------------ the loss
def tdmpc2_loss(model, obs, action, reward, task, cfg):
    """TD-MPC2's `_update` loss written out as its loops, the reference
    (docs/algorithm.md#pre-training-the-td-mpc2-objective)."""
    H = action.shape[0]
    model.eval()
    with torch.no_grad():
        next_z = model.encode(obs[1:], task)
        pi_action, _ = model.pi(next_z, task)
        y = reward.unsqueeze(-1) + model.discount(task) * model.Q(next_z, pi_action, task, "min", target=True)
    model.train()
    z = model.encode(obs[0], task)
    zs, consistency = [z], 0.0
    for t in range(H):
        z = model.next(z, action[t], task)
        consistency = consistency + torch.nn.functional.mse_loss(z, next_z[t]) * cfg.rho**t
        zs.append(z)
    zs = torch.stack(zs)
    qs = model.Q(zs[:-1], action, task, "all")
    reward_preds = model.reward(zs[:-1], action, task)
    reward_loss, value_loss = 0.0, 0.0
    for t in range(H):
        reward_loss = reward_loss + soft_ce(reward_preds[t], reward[t].unsqueeze(-1)).mean() * cfg.rho**t
        for q in range(qs.shape[0]):
            value_loss = value_loss + soft_ce(qs[q, t], y[t]).mean() * cfg.rho**t
    consistency, reward_loss = consistency / H, reward_loss / H
    value_loss = value_loss / (H * qs.shape[0])
    return 20 * consistency + 0.1 * reward_loss + 0.1 * value_loss, consistency, reward_loss, value_loss


def test_loss_is_20_consistency_plus_tenth_reward_plus_tenth_value(datasets):
    cfg = tiny_config(horizon=5, rho=0.9)
    torch.manual_seed(0)
    model = WorldModel(tiny_model_config())
    for p in model.parameters():  # move off TD-MPC2's zero init so every term is non-trivial
        p.data.add_(0.1 * torch.randn_like(p))
    model.update_targets(0.5)
    batch = WindowSampler(datasets, 5, 16, seed=3, obs_dim=24, act_dim=6).sample()
    task = torch.tensor([TASKS.index(int(i)) for i in batch.task])

    torch.manual_seed(1)  # same policy noise, Q-head draws and dropout masks in both
    loss, metrics, zs = world_model_loss(model, batch.obs, batch.action, batch.reward, task, cfg)
    torch.manual_seed(1)
    ref, ref_cons, ref_rew, ref_val = tdmpc2_loss(model, batch.obs, batch.action, batch.reward, task, cfg)

    for got, want in (
        (metrics["consistency"], ref_cons),
        (metrics["reward_ce"], ref_rew),
        (metrics["value_ce"], ref_val),
        (loss, ref),
    ):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got, want)
    assert torch.allclose(
        loss, 20 * metrics["consistency"] + 0.1 * metrics["reward_ce"] + 0.1 * metrics["value_ce"], rtol=1e-6
    )
    assert zs.shape == (6, 16, 16) and zs.requires_grad


def test_defaults_are_pwms_pretraining_recipe():
    cfg = PretrainConfig()
    assert (cfg.horizon, cfg.rho, cfg.batch_size) == (16, 0.99, 1024)
    assert (cfg.lr, cfg.enc_lr_scale, cfg.grad_clip_norm, cfg.tau) == (3e-4, 0.3, 20.0, 0.01)
    assert (cfg.consistency_coef, cfg.reward_coef, cfg.value_coef) == (20.0, 0.1, 0.1)
    assert (cfg.entropy_coef, cfg.pi_lr, cfg.pi_eps) == (1e-4, 3e-4, 1e-5)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    mcfg = model_config(cfg, resolve_tasks("mt30"))
    assert (mcfg.log_std_min, mcfg.log_std_max, mcfg.latent_dim) == (-5.0, 0.5, 512)


# --------------------------------------------------------------------------------- the trainer
def test_optimiser_groups_follow_tdmpc2(datasets):
    trainer = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    m = trainer.model
    groups = trainer.optim.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([9e-5, 3e-4, 3e-4, 3e-4, 3e-4])
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m._encoder.parameters()}
    assert {id(p) for p in groups[4]["params"]} == {id(p) for p in m._task_emb.parameters()}
    assert trainer.pi_optim.param_groups[0]["eps"] == 1e-5
    pi_ids = {id(p) for p in m._pi.parameters()}
    assert not pi_ids & {id(p) for g in groups for p in g["params"]}


def test_split_holds_out_whole_episodes_per_dataset(datasets):
    held_out = split_episodes(datasets, TASKS, val_fraction=0.05, horizon=4, seed=0)
    assert [h.size for h in held_out] == [1, 1]  # round(0.05 * 10) = 0, but at least one
    assert [h.size for h in split_episodes(datasets, TASKS, 0.3, 4, 0)] == [3, 3]
    assert all(np.array_equal(a, b) for a, b in zip(held_out, split_episodes(datasets, TASKS, 0.05, 4, 0)))
    trainer = Pretrainer(tiny_config(val_fraction=0.3), tiny_model_config(), datasets, TASKS)
    assert trainer.sampler.num_episodes == 14 and trainer.val_sampler.num_episodes == 6


def test_training_reduces_held_out_consistency_and_reward_errors(datasets):
    trainer = Pretrainer(tiny_config(lr=1e-3, seed=1), tiny_model_config(), datasets, TASKS)
    for _ in range(10):  # past the first steps, where SimNorm latents are still nearly uniform
        trainer.step()
    before = trainer.validate()
    assert before == trainer.validate()  # fixed held-out windows
    for _ in range(250):
        metrics = trainer.step()
    after = trainer.validate()
    assert all(np.isfinite(list(metrics.values())))
    assert after["consistency"] < 0.7 * before["consistency"]
    assert after["reward_ce"] < 0.6 * before["reward_ce"]
    assert after["reward_mae"] < 0.6 * before["reward_mae"]


def test_resume_continues_exactly_as_an_uninterrupted_run(datasets, tmp_path):
    cfg, mcfg = tiny_config(), tiny_model_config()
    straight = Pretrainer(cfg, mcfg, datasets, TASKS)
    for _ in range(6):
        straight.step()

    first = Pretrainer(cfg, mcfg, datasets, TASKS)
    for _ in range(3):
        first.step()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # whatever happens in between must not matter
    np.random.seed(123)
    resumed = Pretrainer.resume(tmp_path / "ckpt.pt", datasets)
    assert resumed.step_count == 3
    for _ in range(3):
        resumed.step()

    assert resumed.step_count == straight.step_count == 6
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:  # parameters, target Qs and buffers
        assert torch.equal(want[key], got[key]), key
    assert torch.equal(straight.scale.value, resumed.scale.value)
    states = (straight.optim.state_dict()["state"], resumed.optim.state_dict()["state"])
    for a, b in zip(*(st.values() for st in states)):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_checkpoint_is_loadable_with_weights_only(datasets, tmp_path):
    trainer = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    trainer.step()
    path = tmp_path / "run" / "checkpoint.pt"
    trainer.save_checkpoint(path)
    sd = torch.load(path, weights_only=True)
    assert sd["step"] == 1 and sd["config"]["horizon"] == 4
    assert {"model", "optim", "pi_optim", "scale", "rng", "sampler", "held_out"} <= set(sd)
    assert not path.with_name("checkpoint.pt.tmp").exists()  # written aside, then renamed
    assert read_checkpoint(path)["model_config"] == trainer.model_cfg.to_dict()


def test_load_checkpoint_into_a_fresh_trainer(datasets, tmp_path):
    trainer = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    trainer.step()
    trainer.save_checkpoint(tmp_path / "c.pt")
    fresh = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    fresh.load_checkpoint(tmp_path / "c.pt")
    assert fresh.step_count == 1
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), fresh.model.parameters()))


def test_bf16_autocast_step_is_finite(datasets):
    trainer = Pretrainer(tiny_config(amp="bf16"), tiny_model_config(), datasets, TASKS)
    metrics = trainer.step()
    assert all(np.isfinite(list(metrics.values())))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay fp32
    assert set(trainer.validate()) == {"consistency", "reward_ce", "reward_mae"}


@pytest.mark.slow
def test_compiled_loss_matches_eager(datasets):
    eager = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    compiled = Pretrainer(tiny_config(compile=True), tiny_model_config(), datasets, TASKS)
    for _ in range(2):
        a, b = eager.step(), compiled.step()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_sampler_pads_other_datasets_to_the_model_dims(datasets):
    cartpole = datasets[1]  # stored with obs 5, action 1
    sampler = WindowSampler(cartpole, 4, 64, obs_dim=24, act_dim=6, episodes=[np.array([2, 5])])
    batch = sampler.sample()
    assert batch.obs.shape == (5, 64, 24) and batch.action.shape == (4, 64, 6)
    assert (batch.obs[..., 5:] == 0).all() and (batch.action[..., 1:] == 0).all()
    assert (batch.obs[..., :5] != 0).any() and sampler.num_episodes == 2


def test_streamed_windows_train_exactly_as_windows_in_ram(datasets, tmp_path):
    """Over the RAM budget the windows come from disk (prefetched): the same windows, so the same run."""
    ram = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
    disk = Pretrainer(tiny_config(ram_budget_gb=0.0), tiny_model_config(), datasets, TASKS)
    assert disk.streaming and not ram.streaming
    for _ in range(3):
        assert ram.step() == disk.step()
    assert ram.validate() == disk.validate()
    disk.save_checkpoint(tmp_path / "disk.pt")  # the prefetched batches are not in its sampler state
    ram.step()
    resumed = Pretrainer.resume(tmp_path / "disk.pt", datasets, cfg=tiny_config())  # resumed in RAM
    assert not resumed.streaming
    resumed.step()
    for a, b in zip(ram.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
