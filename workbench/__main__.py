"""`python -m workbench ...` (also what torchrun starts)."""

from workbench.cli import main

main()
