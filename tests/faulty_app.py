"""The app with a fault injected into its feed: tick number ``$FAULT_AT_TICK`` raises once.

Served by gunicorn in tests/test_reliability.py to prove that a crashing feed is logged and
restarted while open streams keep going.
"""

import os

from ticker import create_app, get_service

app = create_app()
_market = get_service(app).market
_tick = _market.tick
_fault_at = int(os.environ["FAULT_AT_TICK"])
_count = 0


def _faulty_tick(symbol):
    global _count
    _count += 1
    if _count == _fault_at:
        raise RuntimeError("injected fault")
    return _tick(symbol)


_market.tick = _faulty_tick
