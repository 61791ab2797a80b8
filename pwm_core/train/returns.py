"""Return maths shared by pre-training, extraction and SHAC: TD targets, discounted returns, running
statistics and learning-rate schedules. Pure functions and small state holders, each unit-tested."""

from __future__ import annotations

import torch
from torch import Tensor

RET_RMS_EPS = 1e-5  # official: actor_loss / sqrt(ret_rms.var + 1e-5)


# ----------------------------------------------------------------------------- TD targets, returns
def rho_weights(H: int, rho: float, device: torch.device | str | None = None) -> Tensor:
    """(H,) per-step loss weights rho^t, t = 0..H-1."""
    return rho ** torch.arange(H, device=device, dtype=torch.float32)


def td_targets(reward: Tensor, next_q: Tensor, discount: Tensor) -> Tensor:
    """One-step TD targets y_t = r_t + gamma_task * Q(z'_{t+1}, pi(z'_{t+1})).

    reward: (H, B) real units; next_q: (H, B) decoded target-Q values; discount: (B,) per-task gamma.
    """
    return reward + discount * next_q


def percentile_range(x: Tensor, lo: float = 5.0, hi: float = 95.0) -> Tensor:
    """P_hi - P_lo of all entries of x, linear interpolation between order statistics (scalar)."""
    q = torch.quantile(x.detach().float().flatten(), torch.tensor([lo, hi], device=x.device) / 100)
    return q[1] - q[0]


def td_lambda_targets(rewards: Tensor, next_values: Tensor, done: Tensor, gamma: float, lam: float) -> Tensor:
    """SHAC's TD(lambda) recursion (docs/algorithm.md#extraction-critic-targets), backwards over t = H-1..0.

    rewards r_t, next_values V(z_{t+1}), done d_t (1 where the rollout ends after step t): (H, B) ->
    targets (H, B). With every d_t = 1 this is exactly r_t + gamma V(z_{t+1}).
    """
    H, B = rewards.shape
    A = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    B_ = torch.zeros_like(A)
    ell = torch.ones_like(A)  # lambda weight of the longest return
    targets = torch.empty_like(rewards)
    for t in reversed(range(H)):
        d = done[t]
        ell = ell * lam * (1.0 - d) + d
        A = (1.0 - d) * (lam * gamma * A + gamma * next_values[t] + (1.0 - ell) / (1.0 - lam) * rewards[t])
        B_ = gamma * (next_values[t] * d + B_ * (1.0 - d)) + rewards[t]
        targets[t] = (1.0 - lam) * A + ell * B_
    return targets


def one_step_targets(rewards: Tensor, next_values: Tensor, gamma: float) -> Tensor:
    """r_t + gamma V(z_{t+1}): (H, B), (H, B) -> (H, B)."""
    return rewards + gamma * next_values


def discounted_return(rewards: Tensor, terminal_value: Tensor, gamma: float, bootstrap: str) -> Tensor:
    """sum_t gamma^t r_t + gamma^k V(z_H), k = H+1 ("gamma-h1", the code) or H ("gamma-h").

    rewards (H, B), terminal_value (B,) -> (B,). The discount is a running product, as in the code.
    """
    if bootstrap not in ("gamma-h1", "gamma-h"):
        raise ValueError(f"bootstrap must be 'gamma-h1' or 'gamma-h', got {bootstrap!r}")
    G = torch.zeros_like(terminal_value)
    discount = torch.ones_like(terminal_value)
    for r in rewards:
        G = G + discount * r
        discount = discount * gamma
    if bootstrap == "gamma-h1":
        return G + gamma * discount * terminal_value  # the code advances the discount once more
    return G + discount * terminal_value


# --------------------------------------------------------------------------------- running statistics
class RunningMeanStd:
    """Running mean and population variance, merged batch by batch (Chan et al.'s parallel update).

    Starts at count 1e-4, mean 0, var 1 (the official ``RunningMeanStd``). ``mean`` / ``var`` have
    ``shape``; a batch is (N, *shape).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4, device: torch.device | str = "cpu") -> None:
        self.mean = torch.zeros(shape, device=device)
        self.var = torch.ones(shape, device=device)
        self.count = epsilon

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def scale(self, x: Tensor) -> Tensor:
        """x / sqrt(var + 1e-5): only the spread is divided out, the mean is not subtracted."""
        return x / torch.sqrt(self.var + RET_RMS_EPS)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "mean": self.mean.clone(),
            "var": self.var.clone(),
            "count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        self.mean = sd["mean"].to(self.mean.device, self.mean.dtype).clone()
        self.var = sd["var"].to(self.var.device, self.var.dtype).clone()
        self.count = float(sd["count"])


class RunningScale:
    """TD-MPC2's policy-loss normaliser S: EMA (rate tau) of max(1, P95 - P5) of Q, starting at 1."""

    def __init__(self, tau: float = 0.01, device: torch.device | str = "cpu") -> None:
        self.tau = tau
        self.value = torch.ones((), device=device)

    def update(self, q: Tensor) -> None:
        self.value.lerp_(percentile_range(q).clamp(min=1.0).to(self.value), self.tau)

    def __call__(self, q: Tensor) -> Tensor:
        return q / self.value

    def state_dict(self) -> dict[str, Tensor]:
        return {"value": self.value.clone()}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        self.value.copy_(sd["value"])


# ------------------------------------------------------------------------------------------ schedules
def linear_lr(step: int, total: int, lr0: float, lr_end: float) -> float:
    """lr at iteration ``step``: lr0 at 0, lr_end from ``total`` on (the code's float expression; the
    code never runs past ``total``, where its expression would go on falling)."""
    return (lr_end - lr0) * float(min(step, total) / total) + lr0
