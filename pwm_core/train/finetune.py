"""Online fine-tuning of a world model and its extracted policy in the real environment.

A round (``Finetuner.collect`` then ``updates`` x ``Finetuner.update``):

1. roll the current policy out with its exploration noise (tanh of a Gaussian sample) for a few
   episodes and append them to a replay dataset (the Zarr episode format, crash-safe);
2. alternate world-model updates with TD-MPC2's pre-training objective (consistency + reward CE +
   value CE, then the policy prior and Polyak; :func:`~pwm_core.train.pretrain.update_world_model`)
   and PWM policy updates through the updated model (:meth:`Extractor.step`).

The official PWM code fine-tunes with its own MSE loss, whose reward term broadcasts 101 logits
against a scalar reward in the multitask path (a bug,
docs/algorithm.md#fine-tuning-the-official-loss-and-its-bug); the pre-training objective is
used instead. Windows come from the replay plus, by default, the task's offline episodes, so the
first updates do not fit a single episode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pwm_core.collect import CollectResult
from pwm_core.collect import collect as run_collect
from pwm_core.config import ConfigError, check_device, check_range, from_dict, to_dict
from pwm_core.data import EpisodeDataset, EpisodeWriter, fsck, open_dataset
from pwm_core.data.outofcore import OutOfCoreSampler
from pwm_core.data.sampler import WindowSampler, choose_sampler, in_ram_nbytes
from pwm_core.errors import PwmError
from pwm_core.io import atomic_write, read_checkpoint
from pwm_core.nn import WorldModel
from pwm_core.nn.kernels import use_kernels
from pwm_core.seeding import derived_seed, global_rng_state, set_global_rng_state
from pwm_core.tasks import TASKS, TaskSpec, resolve_tasks
from pwm_core.train import distributed
from pwm_core.train.extract import ExtractConfig, Extractor, Policy
from pwm_core.train.pretrain import PretrainConfig, RunningScale, make_optimizers, update_world_model

CHECKPOINT_FORMAT = "pwm-finetune-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class FinetuneConfig:
    """The online loop; the world-model and policy updates keep their own recipes (PretrainConfig,
    ExtractConfig)."""

    env_steps: int = 5_000  # agent steps to collect in the real environment
    episodes_per_round: int = 2  # episodes collected (in parallel envs) before each update phase
    updates_per_episode: int = 50  # world-model + policy updates per collected episode (TD-MPC2: 1 per step)
    wm_batch_size: int = 256  # windows per world-model update (TD-MPC2's online batch)
    policy_batch_size: int = 64  # start states per policy update (the paper's batch)
    offline_data: bool = True  # also draw windows from the task's offline episodes
    seed: int = 0  # env seeds, exploration noise, samplers
    device: str = "auto"
    ram_budget_gb: float | None = None  # rows held in RAM at most (None: half the available memory); beyond, the
    # windows stream from the Zarr arrays on disk (the same windows)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first field outside its allowed values (after any field changed)."""
        validate_finetune_config(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return from_dict(cls, d)


def validate_finetune_config(cfg: FinetuneConfig) -> None:
    """Raise a :class:`ConfigError` naming the first field outside its allowed values."""
    for key in ("env_steps", "episodes_per_round", "updates_per_episode", "wm_batch_size", "policy_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if cfg.ram_budget_gb is not None:
        check_range(cfg, "ram_budget_gb", low=0.0)
    check_device(cfg.device)


class Finetuner:
    """World model + extractor fine-tuned together on one task of the model.

    ``world_model``: the full model (Q-ensemble and policy prior included, as pre-training left it);
    ``policy``: the extracted policy to start from (its actor, critic and return statistics);
    ``offline``: datasets holding the task's offline episodes (the first start states; then training
    windows too when ``cfg.offline_data``);
    ``replay``: the folder of the online episode dataset (created when absent, reopened on resume).
    """

    def __init__(
        self,
        cfg: FinetuneConfig,
        wm_cfg: PretrainConfig,
        ex_cfg: ExtractConfig,
        world_model: WorldModel,
        policy: Policy,
        task: str,
        offline: Sequence[EpisodeDataset],
        replay: str | os.PathLike,
    ) -> None:
        if task not in world_model.cfg.task_names:
            raise PwmError(
                f"the world model was not trained on {task}; its tasks: {', '.join(world_model.cfg.task_names)}"
            )
        if policy.config["task"] != task:
            raise PwmError(f"the policy acts on {policy.config['task']}, not {task}")
        if task not in TASKS:
            raise PwmError(f"{task} is not a known task: it cannot be run in a real environment")
        self.cfg, self.wm_cfg, self.task, self.spec = cfg, wm_cfg, task, TASKS[task]
        self.device = distributed.resolve_device(cfg.device)
        self.model = world_model.to(self.device)
        self.row = world_model.cfg.task_names.index(task)
        self.offline = list(offline)
        self.replay_path = Path(replay)
        if not (self.replay_path / "zarr.json").exists():
            EpisodeWriter.create(
                self.replay_path, resolve_tasks(task), provenance={"source": "pwmctl finetune", "seed": cfg.seed}
            ).close()
        else:
            fsck(self.replay_path, repair=True)  # an interrupted append leaves an uncommitted tail
        self.round = 0
        self.updates = 0
        self._env_steps: int | None = None  # cached; reset whenever the replay changes
        self.pending = 0  # updates left in this round (a round: collect, then updates_per_episode per episode)
        self.last_round: CollectResult | None = None
        self.workers = 1  # env worker processes for collection
        self._refresh_samplers()
        if self.sampler is None:
            raise PwmError(f"no episode of {task} to start from: give the datasets the policy was extracted from")

        # The extractor shares the model; it freezes it in place, we unfreeze it for model updates
        ex_cfg = ExtractConfig.from_dict(
            {
                **ex_cfg.to_dict(),
                "batch_size": cfg.policy_batch_size,
                "steps": self.total_updates,
                "device": str(self.device),
            }
        )
        self.extractor = Extractor(ex_cfg, self.model, self.row, self._start_states)
        self.extractor.actor.load_state_dict(
            {k.removeprefix("actor."): v for k, v in policy.state_dict().items() if k.startswith("actor.")}
        )
        self.extractor.critic.load_state_dict(
            {k.removeprefix("critic."): v for k, v in policy.state_dict().items() if k.startswith("critic.")}
        )
        self.extractor.ret_rms.load_state_dict(
            {"mean": policy.ret_rms_mean, "var": policy.ret_rms_var, "count": policy.ret_rms_count}
        )
        wm_cfg = PretrainConfig.from_dict({**wm_cfg.to_dict(), "batch_size": cfg.wm_batch_size})
        self.wm_cfg = wm_cfg
        self.model.requires_grad_(True)
        self.optim, self.pi_optim = make_optimizers(self.model, wm_cfg)
        self.model.requires_grad_(False)
        self.scale = RunningScale(wm_cfg.tau, self.device)

    # ------------------------------------------------------------------------------- the loop
    @property
    def total_updates(self) -> int:
        """Updates of each kind over the whole run: the policy's lr decays to its end over these."""
        episodes = -(-self.cfg.env_steps // self.spec.episode_length)
        return max(1, episodes * self.cfg.updates_per_episode)

    @property
    def env_steps(self) -> int:
        """Agent steps in the replay so far."""
        if self._env_steps is None:
            self._env_steps = int(open_dataset(self.replay_path).num_transitions)
        return self._env_steps

    @property
    def done(self) -> bool:
        """All env steps collected and the last round's updates done."""
        return self.env_steps >= self.cfg.env_steps and self.pending == 0

    def step(self) -> dict[str, float]:
        """One step of the online loop: collect a round first when the last round's updates are spent,
        then one world-model + policy update. The first update of a round also reports the round's
        ``explore_return`` (mean return of its episodes, exploration noise on) and ``env_steps``."""
        extra: dict[str, float] = {}
        if self.pending == 0:
            result = self.collect(self.workers)
            self.last_round = result
            self.pending = self.cfg.updates_per_episode * len(result.episodes)
            extra = {
                "explore_return": sum(e.ret for e in result.episodes) / max(len(result.episodes), 1),
                "env_steps": float(self.env_steps),
                "round": float(self.round),
            }
            if self.pending == 0:  # interrupted before an episode finished: nothing to learn from yet
                return extra
        self.pending -= 1
        return {**self.update(), **extra}

    def collect(self, workers: int = 1, on_episode=None) -> CollectResult:
        """Roll out the current policy (exploration noise on) for ``episodes_per_round`` episodes into the
        replay; envs and noise are seeded from (seed, round)."""
        seed = derived_seed(self.cfg.seed, 1, self.round) % 400_000  # collect() multiplies env seeds by 10,007
        left = -(-(self.cfg.env_steps - self.env_steps) // self.spec.episode_length)
        n = max(1, min(self.cfg.episodes_per_round, left))
        generator = torch.Generator(self.device).manual_seed(seed)
        O, A = self.model.cfg.obs_dim, self.spec.act_dim

        def behaviour(obs: np.ndarray, specs: list[TaskSpec]) -> np.ndarray:
            x = torch.zeros(len(obs), O, device=self.device)
            x[:, : obs.shape[1]] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                z = self.model.encode(x, self.extractor._task)
                eps = torch.randn(len(obs), self.model.cfg.act_dim, generator=generator, device=self.device)
                a = self.extractor.actor(z, eps=eps)
            return a[:, :A].float().cpu().numpy()

        writer = EpisodeWriter.open(self.replay_path)
        try:
            result = run_collect(
                writer, {self.task: n}, writer.task_set, behaviour, seed=seed, workers=workers, on_episode=on_episode
            )
        finally:
            writer.close()
        self.round += 1
        self._env_steps = None
        self._refresh_samplers()
        return result

    def update(self) -> dict[str, float]:
        """One world-model update, then one policy update through the updated model."""
        if self.sampler is None:
            raise PwmError("no episode to learn from yet: collect first")
        batch = self.sampler.sample()
        task = torch.full_like(batch.task, self.row)
        self.model.requires_grad_(True)
        try:
            with use_kernels(self.wm_cfg.kernels):  # the world model's own recipe, as in pre-training
                wm = update_world_model(
                    self.model,
                    self.optim,
                    self.pi_optim,
                    self.scale,
                    batch.obs,
                    batch.action,
                    batch.reward,
                    task,
                    self.wm_cfg,
                )
        finally:
            self.model.requires_grad_(False)
        pol = self.extractor.step()
        self.updates += 1
        return {**{f"wm_{k}": v for k, v in wm.items()}, **pol}

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "round": self.round,
            "updates": self.updates,
            "pending": self.pending,
            "replay_episodes": open_dataset(self.replay_path).num_episodes,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "extractor": self.extractor.state_dict(),
            "samplers": [s.get_state() for s in (self.sampler, self.policy_sampler) if s is not None],
            "rng": global_rng_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        self.pi_optim.load_state_dict(sd["pi_optim"])
        self.scale.load_state_dict(sd["scale"])
        self.extractor.load_state_dict(sd["extractor"])
        self.round, self.updates, self.pending = int(sd["round"]), int(sd["updates"]), int(sd.get("pending", 0))
        if "replay_episodes" in sd:  # episodes collected after the checkpoint are collected again, as they were
            writer = EpisodeWriter.open(self.replay_path)
            try:
                if writer.num_episodes > sd["replay_episodes"]:
                    writer.truncate(int(sd["replay_episodes"]))
            finally:
                writer.close()
            self._env_steps = None
            self._refresh_samplers()
        for s, state in zip((self.sampler, self.policy_sampler), sd["samplers"]):
            if s is not None:
                s.set_state(state)
        set_global_rng_state(sd["rng"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        atomic_write(Path(path), lambda f: torch.save(self.state_dict(), f))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        sd = read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "fine-tuning")
        self.load_state_dict(sd)

    # --------------------------------------------------------------------------------- helpers
    def _refresh_samplers(self) -> None:
        """(Re)build the window samplers over the offline data and the replay as it is now. Without
        ``offline_data`` the offline episodes are used only until the replay has one."""
        replay = open_dataset(self.replay_path)
        use_offline = self.cfg.offline_data or not replay.num_episodes
        datasets = (self.offline if use_offline else []) + ([replay] if replay.num_episodes else [])
        datasets = [ds for ds in datasets if self.spec.id in _task_ids(ds)]
        old = [getattr(self, "sampler", None), getattr(self, "policy_sampler", None)]
        if not datasets:
            self.sampler = self.policy_sampler = None
            return
        mcfg, H = self.model.cfg, self.wm_cfg.horizon
        O, A = mcfg.obs_dim, mcfg.act_dim
        budget = None if self.cfg.ram_budget_gb is None else int(self.cfg.ram_budget_gb * 1e9)
        sampler_cls = choose_sampler(2 * in_ram_nbytes(datasets, tasks=[self.spec.id], obs_dim=O, act_dim=A), budget)

        def sampler(batch_size: int, stream: int) -> WindowSampler | OutOfCoreSampler:
            return sampler_cls(
                datasets,
                H,
                batch_size,
                tasks=[self.spec.id],
                seed=derived_seed(self.cfg.seed, stream, self.round),
                device=self.device,
                obs_dim=O,
                act_dim=A,
            )

        self.sampler = sampler(self.cfg.wm_batch_size, 2)
        self.policy_sampler = sampler(self.cfg.policy_batch_size, 3)
        for new, prev in zip((self.sampler, self.policy_sampler), old):
            if prev is not None:  # keep the streams going across rebuilds
                new.set_state(prev.get_state())
                prev.close()

    def _start_states(self) -> Tensor:
        if self.policy_sampler is None:  # before the first round: the extractor only takes its metric states
            raise PwmError("no start states yet")
        return self.policy_sampler.sample().obs[0]


def _task_ids(ds: EpisodeDataset) -> set[int]:
    return {TASKS[name].id for name in ds.per_task_counts() if name in TASKS}
