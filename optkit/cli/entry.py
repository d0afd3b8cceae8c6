"""``main``: the `optkit` process entry (signals, --debug anywhere on the line, one-line usage errors, exit codes)."""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from . import common
from .common import _on_signal, app, err


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    from .. import log as _log

    args = list(sys.argv[1:] if argv is None else argv)
    _log.COMMAND = list(args)  # the reproduce record in the manifest is this exact command line
    if "--debug" in args:  # anywhere on the line, also after the command
        common._DEBUG = True
        args.remove("--debug")
    _log.reset()
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if s is not None and signal.getsignal(s) in (signal.SIG_DFL, None):
                signal.signal(s, _on_signal)
    from typer._click import exceptions as click_exc

    try:
        try:
            rc = typer.main.get_command(app).main(args=args, prog_name="optkit", standalone_mode=False)
        except click_exc.NoArgsIsHelpError as e:  # `optkit` / `optkit recipes`-style groups without a command: the help
            from typer import rich_utils

            rich_utils.rich_format_error(e)
            sys.exit(e.exit_code)
        except click_exc.UsageError as e:  # one line, like every other error, and where to look
            where = e.ctx.command_path if e.ctx is not None else "optkit"
            err.print(f"[bold red]error:[/] {escape(e.format_message())} (see `{escape(where)} -h`)", markup=True,
                      highlight=False)
            sys.exit(e.exit_code)
        except click_exc.ClickException as e:
            err.print(f"[bold red]error:[/] {escape(e.format_message())}", markup=True, highlight=False)
            sys.exit(e.exit_code)
        except typer.Abort:  # click's form of a KeyboardInterrupt that arrived outside a command's own handling
            err.print("interrupted, nothing written", highlight=False)
            sys.exit(130)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SystemExit as e:
        if e.code == 130:
            # Interrupted. Exit 130 as documented: CPython 3.11 remembers a KeyboardInterrupt that passed through
            # some C extensions even when optkit handled it, and would end the process with SIGINT instead (-2).
            import atexit
            import os

            sys.stdout.flush()
            sys.stderr.flush()
            atexit._run_exitfuncs()
            os._exit(130)
        raise
