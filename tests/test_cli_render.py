"""The CLI's renderers and the decisions that moved out of the CLI (optkit.cli.render, optkit.api.compare_backends)."""
from __future__ import annotations

from optkit.cli.render import option_line, option_range


def test_passes_shows_declared_option_ranges():
    base = {"name": "sparsity", "default": 0.5, "choices": [], "doc": "fraction removed"}
    assert option_range(base) == "" and option_range({**base, "range": "", "bounds": {}}) == ""
    assert option_range({**base, "range": "[0, 1)", "bounds": {"min": 0, "lt": 1}}) == " [0, 1)"
    assert option_range({**base, "range": ">= 1", "bounds": {"min": 1}}) == " (>= 1)"
    assert option_range({**base, "bounds": {"gt": 0, "max": 100}}) == " (0, 100]"
    assert option_range({**base, "min": 0.0, "max": 0.95}) == " [0, 0.95]"
    assert option_range({**base, "max": 5}) == " (<= 5)"
    line = option_line({**base, "name": "level", "default": 3, "choices": [1, 2, 3], "range": "[1, 3]"})
    assert line == "level = 3 [1|2|3] [1, 3]: fraction removed"
    assert option_line(base) == "sparsity = 0.5: fraction removed"


def test_every_registered_option_renders(monkeypatch):
    """Every option optkit passes lists renders, with or without declared ranges."""
    from optkit.passes import list_passes

    rows = list_passes()
    assert any(r["name"] == "trt-qdq-layout" for r in rows)
    for r in rows:
        for o in r["options"]:
            text = option_line(o)
            assert text.startswith(f"{o['name']} = ")
            if o.get("range"):
                assert text.split(": ")[0].endswith(o["range"]) or text.split(": ")[0].endswith(f"({o['range']})")


def test_compare_backends_only_when_several(monkeypatch):
    """optimize's 'bench the backends side by side' decision lives in api: one backend, no bench."""
    import optkit.api as api
    import optkit.measure as measure

    calls = []
    monkeypatch.setattr(measure, "bench", lambda art, **kw: calls.append((art, kw)) or {"rows": []})
    assert api.compare_backends({"artifact": "a", "backends": {"ort": {}}}) is None
    assert api.compare_backends({"artifact": "a"}) is None and calls == []
    assert api.compare_backends({"artifact": "a", "backends": {"ort": {}, "tvm": {}}}) == {"rows": []}
    assert calls == [("a", {"backend": "ort,tvm", "rounds": 3, "round_time": 0.3, "warn": None})]


def test_an_import_interrupted_by_a_signal_is_an_interrupt(capsys):
    """A pybind11 module whose import a SIGTERM interrupts raises ImportError('initialization failed') from the
    KeyboardInterrupt: the CLI reports the interrupt (exit 130), not an internal error (exit 1)."""
    import typer

    from optkit.cli.common import _guard

    @_guard
    def cmd():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    @_guard
    def bug():
        raise ImportError("initialization failed")

    for fn, code in ((cmd, 130), (bug, 1)):
        try:
            fn()
        except typer.Exit as e:
            assert e.exit_code == code
        else:
            raise AssertionError("no exit")
