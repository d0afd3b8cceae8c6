"""The report's formatting helpers live in ``optkit.textfmt`` (no heavy imports: the CLI uses them without loading
the report); re-exported here for the report's modules."""
from ..textfmt import _e, _fmt_acc, _join, _note, fmt_bytes, fmt_count, fmt_diff  # noqa: F401
