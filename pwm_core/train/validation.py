"""What a :class:`~pwm_core.train.pretrain.PretrainConfig` may hold: one check for flags, YAML and `config set`.

``coerce`` (pwm_core.config) already guarantees each field's type; these are the value rules the training
loop relies on (a step count of 0 publishes an untrained model, a batch of 0 or rho = NaN crashes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pwm_core.config import ConfigError, check_device, check_range
from pwm_core.nn.kernels import KERNELS
from pwm_core.nn.sizes import SIZES

if TYPE_CHECKING:
    from pwm_core.train.pretrain import PretrainConfig

AMP = (None, "bf16")

# Counts of updates / windows / batches: each must be a whole number >= 1.
_POSITIVE_INTS = ("steps", "batch_size", "horizon", "val_every", "val_batches", "checkpoint_every", "log_every")


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    """Raise a :class:`ConfigError` naming the first field outside its allowed values."""
    size = str(cfg.size).strip().upper()
    if (size if size.endswith("M") else f"{size}M") not in SIZES:
        raise ConfigError(f"size: unknown model size {cfg.size!r}; choose one of {', '.join(SIZES)}")
    for key in _POSITIVE_INTS:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    check_range(cfg, "rho", low=0.0, high=1.0, low_open=True)  # rho^t weights: (0, 1]
    for key in ("lr", "pi_lr", "pi_eps", "grad_clip_norm"):
        check_range(cfg, key, low=0.0, low_open=True)
    for key in (
        "enc_lr_scale",
        "consistency_coef",
        "reward_coef",
        "value_coef",
        "entropy_coef",
        "checkpoint_every_s",
    ):  # checkpoint_every_s 0: by count only
        check_range(cfg, key, low=0.0)
    check_range(cfg, "tau", low=0.0, high=1.0, low_open=True)  # Polyak rate
    check_range(cfg, "val_fraction", low=0.0, high=1.0, high_open=True)
    if cfg.ram_budget_gb is not None:
        check_range(cfg, "ram_budget_gb", low=0.0)  # 0: always stream the windows from disk
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    check_device(cfg.device)
    if cfg.amp not in AMP:
        raise ConfigError(f"amp: {cfg.amp!r} is not supported; use none or bf16")
    if cfg.kernels not in KERNELS:
        raise ConfigError(f"kernels: {cfg.kernels!r} is not one of {list(KERNELS)}")
