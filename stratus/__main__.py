"""Allow `python -m stratus`, the same as the `stratus` command."""

from stratus.cli import main

main()
