"""The app with a fault injected into its feed: one tick raises, once.

Which tick: number ``$FAULT_AT_TICK``, or (with ``$FAULT_FLAG`` set to a path instead) the
first tick after that file exists, so a test can have the fault happen while it watches.
Served by gunicorn in tests/test_reliability.py and tests/test_ops.py to prove that a
crashing feed is logged and restarted while open streams keep going.
"""

import os

from ticker import create_app, get_service

app = create_app()
_market = get_service(app).market
_tick = _market.tick
_fault_at = int(os.environ.get("FAULT_AT_TICK", "0"))
_flag = os.environ.get("FAULT_FLAG")
_count = 0
_faulted = False


def _faulty_tick(symbol):
    global _count, _faulted
    _count += 1
    due = _count == _fault_at or (_flag is not None and os.path.exists(_flag))
    if due and not _faulted:
        _faulted = True
        raise RuntimeError("injected fault")
    return _tick(symbol)


_market.tick = _faulty_tick
