"""pwmctl: the command line of the PWM toolkit."""

from pwm_core import __version__

__all__ = ["__version__"]
