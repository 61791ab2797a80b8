"""pwm_core.train.optim.adam: torch's fused Adam on CPU parameters, the same updates as the per-tensor loop."""

from __future__ import annotations

import torch

from pwm_core.nn import CriticEnsemble
from pwm_core.train.optim import adam, use_fused_adam


def _train(fused: bool) -> tuple[torch.optim.Adam, torch.Tensor]:
    use_fused_adam(fused)
    try:
        torch.manual_seed(0)
        critic = CriticEnsemble(8, 3, (16, 8))
        optim = adam(
            [
                {"params": critic.weights.parameters(), "lr": 1e-3},  # generators inside groups
                {"params": critic.biases.parameters()},
                {"params": critic.norms.parameters()},
            ],
            lr=2e-3,
            betas=(0.7, 0.95),
        )
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in critic.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            optim.step()
        return optim, torch.cat([p.detach().flatten() for p in critic.parameters()])
    finally:
        use_fused_adam(True)


def test_fused_adam_matches_the_loop_and_keeps_every_parameter():
    fused, a = _train(True)
    loop, b = _train(False)
    assert fused.defaults["fused"] is True and not loop.defaults.get("fused")
    assert sum(len(g["params"]) for g in fused.param_groups) == 10  # nothing lost from the generators
    assert [g["lr"] for g in fused.param_groups] == [1e-3, 2e-3, 2e-3]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a - b).abs().max() < 1e-6 and not torch.equal(a, torch.zeros_like(a))
