"""Training: world-model pre-training (single device and DDP under torchrun)."""

from pwm_core.train.pretrain import (
    PretrainConfig, Pretrainer, RunningScale, held_out_metrics, latent_rollout, model_config, policy_loss,
    read_checkpoint, rho_weights, split_episodes, td_targets, world_model_loss,
)

__all__ = ["PretrainConfig", "Pretrainer", "RunningScale", "held_out_metrics", "latent_rollout", "model_config",
           "policy_loss", "read_checkpoint", "rho_weights", "split_episodes", "td_targets", "world_model_loss"]
