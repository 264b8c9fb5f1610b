"""What every command shares: the error-to-exit-code rule and the settings of the run."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from melt.core.errors import MeltError

if TYPE_CHECKING:
    from melt.core.settings import Settings

EXIT_USER_ERROR = 2


class MeltGroup(click.Group):
    """Turns every error a user can cause into one line on stderr and exit code 2, for all commands:
    a :class:`MeltError` from the library, and click's own usage errors (a missing option, a value
    of the wrong type, ``--out`` that is a file), which click would print as three lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeltError as exc:
            click.echo(f"melt: error: {one_line(str(exc))}", err=True)
            ctx.exit(EXIT_USER_ERROR)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if not standalone_mode:
                raise
            click.echo(f"melt: error: {one_line(exc.format_message())}", err=True)
            sys.exit(EXIT_USER_ERROR if isinstance(exc, click.UsageError) else exc.exit_code)
        except click.Abort:
            if not standalone_mode:
                raise
            click.echo("melt: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def one_line(text: str) -> str:
    """``text`` on one line: the error style every command keeps."""
    return " ".join(str(text).split())


def settings_of(ctx: click.Context) -> Settings:
    """The run's settings: ``--config`` (or ./config.yaml, or the defaults) and the environment."""
    from melt.core.config import load_settings

    return load_settings(ctx.find_root().obj.get("config_path"))
