"""``bench.profile``: the census table's rows."""

from __future__ import annotations

from bench.profile import _census_rows


def test_each_coroutines_row_is_under_the_tasks_row() -> None:
    gateway = {
        "callbacks scheduled (call_soon)": 5.6,
        "tasks": 1.0,
        "  task Gateway.submit": 1.0,
        "  task _serve": 0.5,
        "timers (call_at / call_later)": 0.2,
        "wake-ups from other threads (call_soon_threadsafe)": 1.0,
    }
    proxy = {"tasks": 1.0, "  task Proxy.forward": 1.0, "loop iterations": 3.0, "rare": 0.001}
    names = [row[0] for row in _census_rows(gateway, proxy)]
    assert names == [
        "callbacks scheduled (call_soon)",
        "loop iterations",
        "tasks",
        "  task Gateway.submit",
        "  task Proxy.forward",
        "  task _serve",
        "timers (call_at / call_later)",
        "wake-ups from other threads (call_soon_threadsafe)",
    ]
    assert _census_rows(gateway, proxy)[2] == ["tasks", "1.00", "1.00"]
