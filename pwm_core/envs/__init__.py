"""Environments: TD-MPC2's dm_control (incl. 11 custom) and Meta-World tasks, padding, vector env.

>>> import numpy as np
>>> env = make_env("walker-walk", seed=0)
>>> obs = env.reset()                                   # (24,) float32
>>> obs, reward, done, info = env.step(random_action(env.spec, np.random.default_rng(0)))
"""

from pwm_core.envs.base import Env, PaddedEnv, make_env, random_action
from pwm_core.envs.lockstep import Step, lockstep
from pwm_core.envs.vector import VectorEnv

__all__ = ["Env", "PaddedEnv", "Step", "VectorEnv", "lockstep", "make_env", "random_action"]
