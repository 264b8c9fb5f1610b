"""``python -m melt.cli``."""

from melt.cli import main

main()
