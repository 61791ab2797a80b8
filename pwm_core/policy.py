"""The policy artifact: a self-contained actor that acts from raw observations (policy.safetensors +
policy.yaml), written from an :class:`~pwm_core.train.extract.Extractor` and read back without the world
model. SHAC policies (``pwm_core.diffsim.shac``) share the file names; :func:`load_policy` reads either,
importing the SHAC reader (and Warp) only for that format.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from pwm_core.errors import PwmError
from pwm_core.io import atomic_write
from pwm_core.nn.actor_critic import Actor, CriticEnsemble
from pwm_core.nn.checkpoint import load_matching, one_line
from pwm_core.nn.layers import SimNorm, inference_plan, mlp
from pwm_core.tasks import TASKS

if TYPE_CHECKING:
    from pwm_core.train.extract import Extractor

POLICY_FORMAT = "pwm-policy"
POLICY_VERSION = 1
POLICY_FILE = "policy.safetensors"
POLICY_CONFIG_FILE = "policy.yaml"
# Other policy formats in the same two files: format -> "module:reader(folder, config, device)", imported on use
READERS = {"pwm-shac-policy": "pwm_core.diffsim.shac:load_shac_policy"}


_POLICY_KEYS = (
    "task",
    "task_row",
    "obs_dim",
    "act_dim",
    "task_obs_dim",
    "task_act_dim",
    "task_dim",
    "latent_dim",
    "encoder_units",
    "simnorm_dim",
    "actor_units",
    "min_logstd",
    "critic_units",
    "num_critics",
)


def policy_config(extractor: Extractor) -> dict[str, Any]:
    """The plain-data half of a policy artifact (policy.yaml): dims, layer widths, provenance."""
    wm, cfg, row = extractor.world_model, extractor.cfg, extractor.task_row
    spec = TASKS.get(extractor.task_name)
    return {
        "format": POLICY_FORMAT,
        "version": POLICY_VERSION,
        "task": extractor.task_name,
        "task_row": row,
        "obs_dim": wm.cfg.obs_dim,
        "act_dim": wm.cfg.act_dim,
        "task_obs_dim": spec.obs_dim if spec is not None else wm.cfg.obs_dim,
        "task_act_dim": wm.cfg.action_dims[row],
        "task_dim": wm.cfg.task_dim,
        "latent_dim": wm.cfg.latent_dim,
        "encoder_units": [layer.out_features for layer in list(wm._encoder)[:-1]],
        "simnorm_dim": wm.cfg.simnorm_dim,
        "actor_units": list(cfg.actor_units),
        "min_logstd": cfg.min_logstd,
        "critic_units": list(cfg.critic_units),
        "num_critics": cfg.num_critics,
        "steps": extractor.step_count,
        "extract": cfg.to_dict(),
    }


@torch.no_grad()
def policy_tensors(extractor: Extractor) -> dict[str, Tensor]:
    """The tensor half of a policy artifact, under :class:`Policy`'s state-dict keys: the world model's
    encoder (``encoder.*``), the task's embedding row as the encoder sees it (max_norm applied),
    ``actor.*``, ``critic.*`` and the return statistics ``ret_rms_{mean,var,count}``."""
    wm = extractor.world_model
    tensors = {f"encoder.{k}": v for k, v in wm._encoder.state_dict().items()}
    tensors["task_embedding"] = wm._task_emb(extractor._task)
    tensors.update({f"actor.{k}": v for k, v in extractor.actor.state_dict().items()})
    tensors.update({f"critic.{k}": v for k, v in extractor.critic.state_dict().items()})
    rms = extractor.ret_rms.state_dict()
    tensors.update({f"ret_rms_{k}": rms[k] for k in ("mean", "var", "count")})
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


class Policy(nn.Module):
    """An extracted policy that acts from raw observations: z = h(o, e_task), a = tanh(mu(z)).

    Built from :func:`policy_config` data and :func:`policy_tensors` (or :func:`load_policy`); needs
    no world model. ``critic`` and the ``ret_rms_*`` buffers are kept for value queries and planning.
    """

    task_embedding: Tensor  # buffers
    ret_rms_mean: Tensor
    ret_rms_var: Tensor
    ret_rms_count: Tensor

    def __init__(self, config: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        missing = [k for k in _POLICY_KEYS if k not in config]
        if missing:
            raise PwmError(f"policy config: missing keys {', '.join(missing)}")
        self.config = c = dict(config)
        self.encoder = mlp(
            c["obs_dim"] + c["task_dim"], list(c["encoder_units"]), c["latent_dim"], act=SimNorm(c["simnorm_dim"])
        )
        self.register_buffer("task_embedding", torch.zeros(c["task_dim"]))
        self.actor = Actor(c["latent_dim"], c["act_dim"], c["actor_units"], min_logstd=c["min_logstd"])
        self.critic = CriticEnsemble(c["latent_dim"], c["num_critics"], c["critic_units"])
        self.register_buffer("ret_rms_mean", torch.zeros(()))
        self.register_buffer("ret_rms_var", torch.ones(()))
        self.register_buffer("ret_rms_count", torch.zeros((), dtype=torch.float64))
        self._plan: list | None = None  # act's functional ops, bound to the parameters (built on first use)
        if tensors is not None:
            self.load_tensors(tensors)
        self.eval()

    @classmethod
    def from_extractor(cls, extractor: Extractor) -> Policy:
        """The extractor's current policy, on the CPU."""
        return cls(policy_config(extractor), policy_tensors(extractor))

    def load_tensors(self, tensors: dict[str, Tensor], where: str = "policy tensors") -> None:
        """Load :func:`policy_tensors`; any missing, unexpected or mis-shaped tensor is one PwmError."""
        load_matching(self, tensors, f"{where} do not match the policy config")
        self._plan = None

    def _apply(self, fn, recurse=True):  # .to(), .half(), ...: parameters may be new tensors
        self._plan = None
        return super()._apply(fn, recurse)

    def encode(self, obs: Tensor) -> Tensor:
        """obs (N, O) padded -> z (N, L); the world model's encode with this task's embedding row."""
        return self.encoder(torch.cat([obs, self.task_embedding.expand(*obs.shape[:-1], -1)], dim=-1))

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """obs (N, O) padded or (N, task obs dim) -> actions (N, task act dim) in [-1, 1], float32.

        A single observation (O,) gives one action (task act dim,). Stochastic actions draw from torch's
        global generator.
        """
        x = self._obs(obs)
        if deterministic:  # tanh(mu(h(o))) through the bound functional ops: bit-equal, less per-op overhead
            if self._plan is None:
                self._plan = inference_plan(self.encoder) + inference_plan(self.actor.mu_net)
            h = torch.cat([x, self.task_embedding.expand(*x.shape[:-1], -1)], dim=-1)
            for op in self._plan:
                h = op(h)
            a = torch.tanh(h)
        else:
            a = self.actor(self.encode(x), deterministic=False)
        out = a[..., : self.config["task_act_dim"]].float().cpu().numpy()
        return out[0] if np.ndim(obs) == 1 else out

    @torch.no_grad()
    def value(self, obs: np.ndarray | Tensor) -> np.ndarray:
        """min_k V_k(h(o)) in symlog return units: obs as in :meth:`act` -> (N,) (or a scalar)."""
        v = self.critic.min(self.encode(self._obs(obs))).squeeze(-1).float().cpu().numpy()
        return v[0] if np.ndim(obs) == 1 else v

    def _obs(self, obs: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.task_embedding.device)
        x = x.unsqueeze(0) if x.ndim == 1 else x
        O, d = self.config["obs_dim"], x.shape[-1]
        if d == self.config["task_obs_dim"] and d < O:
            x = F.pad(x, (0, O - d))  # zero padding, as the multi-task wrapper
        elif d != O:
            raise PwmError(
                f"observations have {d} dims; policy {self.config['task']!r} takes "
                f"{self.config['task_obs_dim']} (or {O} padded)"
            )
        return x


def save_policy(extractor: Extractor, folder: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``folder/policy.safetensors`` and ``folder/policy.yaml`` (each atomically); ``metadata``
    (plain data, e.g. the world model's reference) is stored under ``metadata`` in the YAML."""
    folder = Path(folder)
    config = policy_config(extractor)
    if metadata:
        config["metadata"] = metadata
    data = save(policy_tensors(extractor), metadata={"format": POLICY_FORMAT})
    atomic_write(folder / POLICY_FILE, lambda f: f.write(data))
    text = yaml.safe_dump(config, sort_keys=False).encode()
    atomic_write(folder / POLICY_CONFIG_FILE, lambda f: f.write(text))
    return folder


def load_policy(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Rebuild a policy written by :func:`save_policy` (or, by the ``format`` in its policy.yaml, a SHAC
    policy written by :func:`pwm_core.diffsim.shac.save_shac_policy`); any problem is a one-line PwmError."""
    folder = Path(folder)
    for name in (POLICY_FILE, POLICY_CONFIG_FILE):
        if not (folder / name).is_file():
            raise PwmError(f"{folder} has no {name}: a policy folder holds {POLICY_FILE} and {POLICY_CONFIG_FILE}")
    try:
        config = yaml.safe_load((folder / POLICY_CONFIG_FILE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PwmError(f"{POLICY_CONFIG_FILE} in {folder} is not valid YAML: {one_line(e)}") from None
    if isinstance(config, dict) and config.get("format") in READERS:  # e.g. SHAC's (imports Warp: on use only)
        module, reader = READERS[config["format"]].split(":")
        return getattr(importlib.import_module(module), reader)(folder, config, device)
    if not isinstance(config, dict) or config.get("format") != POLICY_FORMAT:
        raise PwmError(f"{folder / POLICY_CONFIG_FILE} is not a pwmctl policy config")
    if config.get("version", 0) > POLICY_VERSION:
        raise PwmError(f"{folder} holds a policy of a newer pwmctl (version {config['version']}); upgrade pwmctl")
    return build_policy(Policy, folder, config, device)


def build_policy(policy_cls: type, folder: Path, config: dict[str, Any], device: str | torch.device) -> Any:
    """``policy_cls(config)`` with the tensors of ``folder/policy.safetensors`` loaded (``load_tensors``),
    on ``device``; a corrupt file or invalid config is a one-line PwmError."""
    try:
        tensors = load_file(folder / POLICY_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise PwmError(f"{POLICY_FILE} in {folder} is corrupt or truncated: {one_line(e)}") from None
    try:
        policy = policy_cls(config)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PwmError(f"{POLICY_CONFIG_FILE} in {folder} has invalid values: {one_line(e)}") from None
    policy.load_tensors(tensors, where=f"{POLICY_FILE} in {folder}")
    return policy.to(device)
