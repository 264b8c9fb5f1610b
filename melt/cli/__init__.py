"""The command line, a thin layer over the library: ``melt generate|detect|train|import|evaluate|deliver|plugins|traces``."""

from melt.cli.app import cli, main

__all__ = ["cli", "main"]
