"""The `optkit` command: parses arguments, calls the library, renders with rich. Nothing else lives here.

``common`` (the app, consoles, option types, error guard, logging), ``commands`` (optimize, import, tune,
optimize-many), ``commands_info`` (bench, report, inspect, recipes, passes, verify, cache), ``render`` /
``render_bench`` (rich tables and lines: the commands decide, the renderers only print) and ``entry`` (``main``).
"""
from __future__ import annotations

from . import commands, commands_info  # noqa: F401  (registers the commands on the app)
from .common import app, err, out, setup_logging
from .entry import main

__all__ = ["app", "main", "setup_logging", "out", "err"]
