"""symlog / two-hot discrete regression: hand-computed values (101 bins of width 0.2 in [-10, 10])."""

from __future__ import annotations

import math

import pytest
import torch

from pwm_core.nn.math import almost_two_hot_inv, soft_ce, symexp, symlog, two_hot, two_hot_inv

E1 = math.e - 1  # symlog(e - 1) = 1


def test_symlog_symexp_values_and_inverse():
    x = torch.tensor([0.0, E1, -E1, math.e**3 - 1])
    torch.testing.assert_close(symlog(x), torch.tensor([0.0, 1.0, -1.0, 3.0]))
    torch.testing.assert_close(symexp(torch.tensor([1.0, -2.0])), torch.tensor([E1, -(math.e**2 - 1)]))
    y = torch.linspace(-1000, 1000, 41, dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(y)), y)


def test_two_hot_zero_reward_is_the_middle_bin():
    target = two_hot(torch.tensor([0.0]))
    assert target.shape == (1, 101)
    assert target[0, 50] == 1.0 and target.sum() == 1.0


def test_two_hot_symlog_one_is_bin_55():
    target = two_hot(torch.tensor([E1]))[0]
    assert target.argmax() == 55
    assert target[55] == pytest.approx(1.0, abs=1e-5)  # (1 + 10) / 0.2 = 55 exactly


def test_two_hot_between_bins_splits_mass():
    # symlog = 0.13 lies at 50.65 bins: 0.35 on bin 50, 0.65 on bin 51; -0.13 mirrors it.
    target = two_hot(torch.tensor([math.expm1(0.13), -math.expm1(0.13)]))
    torch.testing.assert_close(target[0, 50:52], torch.tensor([0.35, 0.65]), atol=1e-5, rtol=0)
    torch.testing.assert_close(target[1, 49:51], torch.tensor([0.65, 0.35]), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.sum(-1), torch.ones(2))
    assert (target > 0).sum() == 4


def test_two_hot_clamps_at_plus_minus_ten():
    target = two_hot(torch.tensor([1e6, -1e6, math.expm1(10.0)]))
    assert target[0, 100] == 1.0 and target[1, 0] == 1.0
    assert target[2, 100] == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(target.sum(-1), torch.ones(3))


@pytest.mark.parametrize(
    "shape, out", [((7,), (7, 101)), ((7, 1), (7, 101)), ((3, 7, 1), (3, 7, 101)), ((3, 7), (3, 7, 101))]
)
def test_two_hot_shapes(shape, out):
    assert two_hot(torch.zeros(shape)).shape == out


def test_two_hot_inv_roundtrip():
    x = torch.tensor([0.0, 0.5, -0.5, 1.0, 3.7, -12.0, 250.0, -1000.0])
    logits = torch.log(two_hot(x))  # -inf where the mass is 0: softmax gives the two-hot back
    decoded = two_hot_inv(logits)
    assert decoded.shape == (8, 1)
    torch.testing.assert_close(decoded.squeeze(-1), x, rtol=1e-4, atol=1e-5)


def test_almost_two_hot_inv_stays_in_symlog_units():
    x = torch.tensor([0.0, 0.5, 2.0, -7.0, 1000.0])
    logits = torch.log(two_hot(x))
    torch.testing.assert_close(almost_two_hot_inv(logits).squeeze(-1), symlog(x), rtol=1e-5, atol=1e-5)
    # Uniform logits decode to the middle of the range: 0 in both units.
    assert almost_two_hot_inv(torch.zeros(2, 101)).abs().max() < 1e-5


def test_custom_bins_range():
    target = two_hot(torch.tensor([0.0]), num_bins=5, vmin=-1.0, vmax=1.0)  # bins -1, -.5, 0, .5, 1
    assert target.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]
    assert two_hot_inv(torch.log(target), vmin=-1.0, vmax=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_ce_hand_values():
    y = torch.tensor([0.3, -4.0])
    # Uniform logits: cross-entropy log(101) whatever the target.
    torch.testing.assert_close(soft_ce(torch.zeros(2, 101), y), torch.full((2, 1), math.log(101)))
    # Logits equal to the log of a 50/50 two-hot: cross-entropy = its entropy, log 2.
    half = torch.tensor([math.expm1(0.1)])  # symlog 0.1: half-way between bins 50 and 51
    logits = torch.log(two_hot(half).clamp_min(1e-30))
    assert soft_ce(logits, half).item() == pytest.approx(math.log(2), abs=1e-4)


def test_soft_ce_keeps_time_and_batch_dims_with_batch_one():
    logits, target = torch.zeros(4, 1, 101), torch.zeros(4, 1, 1)
    assert soft_ce(logits, target).shape == (4, 1, 1)
    assert soft_ce(logits, target.squeeze(-1)).shape == (4, 1, 1)


def test_soft_ce_broadcasts_targets_over_q_heads():
    logits = torch.randn(5, 3, 2, 101)  # (num_q, H, B, bins)
    y = torch.randn(3, 2)
    torch.testing.assert_close(soft_ce(logits, y), soft_ce(logits, y.expand(5, 3, 2)))
    assert soft_ce(logits, y).shape == (5, 3, 2, 1)
