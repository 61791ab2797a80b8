"""World-model configuration and TD-MPC2's model-size presets (docs/algorithm.md#world-model-size-presets)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

from pwm_core.errors import PwmError
from pwm_core.tasks import TaskSet, discount_for_length

SIZES = ("1M", "5M", "19M", "48M", "317M")

# TD-MPC2's MODEL_SIZE: enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q.
_PRESETS: dict[str, dict[str, int]] = {
    "1M": dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    "5M": dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    "19M": dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    "48M": dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    "317M": dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}


@dataclass
class WorldModelConfig:
    """Everything needed to rebuild a :class:`~pwm_core.nn.world_model.WorldModel` (its config.yaml).

    Per-task lists are indexed by embedding row (the order of the task set).
    """

    obs_dim: int  # padded observation dim O (MT30 24, MT80 39)
    act_dim: int  # padded action dim A (6 for MT30/MT80)
    action_dims: list[int]  # true action dim per task row: the action masks
    episode_lengths: list[int]  # agent decisions per episode per task row: the discounts
    task_names: list[str]  # per task row, informative
    task_dim: int  # task-embedding dim d_e
    enc_dim: int  # encoder hidden width
    num_enc_layers: int  # encoder layers incl. the output layer (hidden = num_enc_layers - 1)
    mlp_dim: int  # hidden width of dynamics, reward, policy prior and Q-heads (2 layers each)
    latent_dim: int  # latent z dim L (multiple of simnorm_dim)
    num_q: int  # Q-heads in the ensemble
    num_bins: int = 101  # reward/value bins in symlog space
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8  # SimNorm group size
    dropout: float = 0.01  # in the first layer of each Q-head
    # TD-MPC2's policy-prior log-std range; PWM's tdmpc2 fork trained with [-5, 0.5].
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    size: str = ""  # preset name, informative

    def __post_init__(self) -> None:
        n = len(self.action_dims)
        if not (len(self.episode_lengths) == len(self.task_names) == n) or n == 0:
            raise PwmError(
                f"world-model config: action_dims ({n}), episode_lengths "
                f"({len(self.episode_lengths)}) and task_names ({len(self.task_names)}) "
                "need one entry per task, at least one task"
            )
        if max(self.action_dims) > self.act_dim or min(self.action_dims) < 1:
            raise PwmError(f"world-model config: action_dims {self.action_dims} must lie in 1..act_dim={self.act_dim}")
        if self.latent_dim % self.simnorm_dim:
            raise PwmError(
                f"world-model config: latent_dim {self.latent_dim} is not a multiple of simnorm_dim {self.simnorm_dim}"
            )
        if self.num_q < 2:
            raise PwmError(f"world-model config: num_q {self.num_q} < 2 (Q draws two heads)")
        if self.num_bins < 2:
            raise PwmError(f"world-model config: num_bins {self.num_bins} < 2 (scalar heads are not supported)")

    @property
    def n_tasks(self) -> int:
        return len(self.action_dims)

    @property
    def discounts(self) -> list[float]:
        """TD-MPC2's per-task gamma from each episode length."""
        return [discount_for_length(L) for L in self.episode_lengths]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorldModelConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`PwmError`."""
        if not isinstance(d, dict):
            raise PwmError(f"world-model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown = sorted(set(d) - known)
        missing = sorted(required - set(d))
        if unknown or missing:
            parts = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + (
                [f"missing keys {', '.join(missing)}"] if missing else []
            )
            raise PwmError(f"world-model config: {'; '.join(parts)}")
        d = dict(d)
        for key in ("action_dims", "episode_lengths", "task_names"):
            d[key] = list(d[key])
        return cls(**d)


def _canonical_size(size: str) -> str:
    key = str(size).strip().upper()
    key = key if key.endswith("M") else f"{key}M"
    if key not in _PRESETS:
        raise PwmError(f"unknown model size {size!r}: choose one of {', '.join(SIZES)}")
    return key


def world_model_config(size: str, task_set: TaskSet, task_dim: int | None = None) -> WorldModelConfig:
    """TD-MPC2's preset ``size`` ("1M".."317M"; "48m" or "48" also work) for ``task_set``.

    Parser quirks kept: task_dim 96 for mt80 or sizes 1M/317M, else 64; latent 512 for mt30-19M.
    A single-task set still gets a task embedding (TD-MPC2 would use task_dim 0), so every model
    has the same structure.
    """
    size = _canonical_size(size)
    preset = dict(_PRESETS[size])
    if task_set.name == "mt30" and size == "19M":
        preset["latent_dim"] = 512  # TD-MPC2's "slightly smaller" mt30-19M checkpoint
    if task_dim is None:
        task_dim = 96 if task_set.name == "mt80" or size in ("1M", "317M") else 64
    return WorldModelConfig(
        obs_dim=task_set.obs_dim,
        act_dim=task_set.act_dim,
        action_dims=[t.act_dim for t in task_set.tasks],
        episode_lengths=[t.episode_length for t in task_set.tasks],
        task_names=list(task_set.names),
        task_dim=task_dim,
        size=size,
        **preset,
    )


def _mlp_params(in_dim: int, hidden: list[int], out_dim: int, normed_out: bool) -> int:
    """Learnable parameters of layers.mlp: Linear weights + biases, LayerNorm gains + biases."""
    dims = [in_dim, *hidden, out_dim]
    linear = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1))
    return linear + 2 * sum(hidden) + (2 * out_dim if normed_out else 0)


def count_parameters(cfg: WorldModelConfig) -> dict[str, int]:
    """Learnable parameters per component and their ``total`` (the target-Q copy is not counted).

    Computed from the architecture, so it works for sizes too large to build.
    """
    Z, E, A, H = cfg.latent_dim, cfg.task_dim, cfg.act_dim, [cfg.mlp_dim] * 2
    counts = {
        "encoder": _mlp_params(cfg.obs_dim + E, max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim], Z, True),
        "dynamics": _mlp_params(Z + E + A, H, Z, True),
        "reward": _mlp_params(Z + E + A, H, cfg.num_bins, False),
        "pi": _mlp_params(Z + E, H, 2 * A, False),
        "Qs": cfg.num_q * _mlp_params(Z + E + A, H, cfg.num_bins, False),
        "task_emb": cfg.n_tasks * E,
    }
    counts["total"] = sum(counts.values())
    return counts
