"""sse-starlette under uvicorn, written the way its README and examples do it: an
``EventSourceResponse`` around an async generator that yields dicts (event, id, data), fed by a
per-viewer ``asyncio.Queue``. A feed task started in the app's lifespan ticks the ticker-10
workload and puts each event into every viewer's queue.

Run: uvicorn server:app --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workload import Market, schedule

viewers: set[asyncio.Queue] = set()


async def feed() -> None:
    market = Market()
    for wait, symbol in schedule():
        await asyncio.sleep(wait)
        seq, row = market.tick(symbol)
        event = {"event": symbol, "id": str(seq), "data": row}
        for queue in viewers:
            queue.put_nowait(event)


async def stream(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue = asyncio.Queue()
    viewers.add(queue)

    async def events():
        try:
            while True:
                yield await queue.get()
        finally:
            viewers.discard(queue)

    return EventSourceResponse(events())


@contextlib.asynccontextmanager
async def lifespan(app):
    task = asyncio.create_task(feed())
    yield
    task.cancel()


app = Starlette(routes=[Route("/stream", stream)], lifespan=lifespan)
