"""Training: world-model pre-training (single device and DDP under torchrun) and PWM policy extraction."""

from pwm_core.policy import Policy, load_policy, save_policy
from pwm_core.train.extract import ExtractConfig, Extractor
from pwm_core.train.pretrain import (
    PretrainConfig,
    Pretrainer,
    RunningScale,
    held_out_metrics,
    latent_rollout,
    model_config,
    policy_loss,
    read_checkpoint,
    rho_weights,
    split_episodes,
    td_targets,
    world_model_loss,
)

__all__ = [
    "ExtractConfig",
    "Extractor",
    "Policy",
    "PretrainConfig",
    "Pretrainer",
    "RunningScale",
    "held_out_metrics",
    "latent_rollout",
    "model_config",
    "policy_loss",
    "read_checkpoint",
    "rho_weights",
    "split_episodes",
    "td_targets",
    "world_model_loss",
    "load_policy",
    "save_policy",
]
