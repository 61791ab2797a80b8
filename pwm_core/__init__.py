"""pwm_core: the PWM library (tasks, envs, datasets, models, training, planning, evaluation)."""

__version__ = "0.1.0"
