"""`python -m pwmctl` (and `torchrun -m pwmctl`) entry point."""

from pwmctl.cli import main

main()
