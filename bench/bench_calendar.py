"""Calendar benchmark (issue 10). `python bench/bench_calendar.py` (no database needed).

The needs-location queue of 1,000 cases received in 2019 computes 1,000 clocks (time left and colour,
three working-time spans each, from 2019 to today). Before issue 10 each span stepped day by day
(30.5 s for the queue); now each is two look-ups in prefix sums. Printed: the 1,000 clocks beside the
step-by-day reckoning measured in the same run (on 20 clocks, scaled to 1,000). Target: the whole
queue < 200 ms (tests/cases/test_calendar.py measures it through the API, bound 1 s).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table  # noqa: E402
from tests.cases.test_calendar import _old_between  # noqa: E402 - the step-by-day reckoning, the anchor


def main() -> None:
    from layers.cases import calendar as lcal
    from layers.cases import workflow as wf

    cal = lcal.calendar()
    now = dt.datetime(2026, 12, 4, 10, tzinfo=dt.UTC)
    cases = [{"state": "collected", "category_code": "E10101", "urgency": "normal",
              "updated_at": dt.datetime(2019, 1 + i % 12, 1 + i % 28, 1 + i % 8, tzinfo=dt.UTC),
              "step_deadline_at": dt.datetime(2019, 1 + i % 12, 1 + i % 28, 5 + i % 8, tzinfo=dt.UTC)}
             for i in range(1000)]
    wf.clock(cases[0], now)
    t0 = time.perf_counter()
    for c in cases:
        wf.clock(c, now)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cases[:20]:
        for a, b in ((c["updated_at"], c["step_deadline_at"]), (c["updated_at"], now), (c["step_deadline_at"], now)):
            _old_between(cal, a, b)
    old = (time.perf_counter() - t0) * 50
    tab = Table("calendar: clocks of old cases")
    tab.add("1,000 clocks of cases from 2019 (needs-location queue)", f"{ours * 1000:.0f} ms",
            f"step by day: {old * 1000:,.0f} ms ({old / ours:,.0f}×)", "queue < 200 ms: " + ("OK" if ours < 0.2 else "MISS"))
    tab.print()


if __name__ == "__main__":
    main()
