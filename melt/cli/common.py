"""What every command shares: the error-to-exit-code rule and the settings of the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from melt.core.errors import MeltError

if TYPE_CHECKING:
    from melt.core.settings import Settings

EXIT_USER_ERROR = 2


class MeltGroup(click.Group):
    """Turns every :class:`MeltError` into one line on stderr and exit code 2, for all commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeltError as exc:
            click.echo(f"melt: error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def settings_of(ctx: click.Context) -> Settings:
    """The run's settings: ``--config`` (or ./config.yaml, or the defaults) and the environment."""
    from melt.core.config import load_settings

    return load_settings(ctx.find_root().obj.get("config_path"))
