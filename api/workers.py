"""Several HTTP worker processes (``citygrid serve --workers N``): what a worker adds to its answers.

Every in-process cache of the app follows the database, so a write through one worker is seen by all
at their next request (docs/SCALING.md lists each cache and what it follows). For the tests and load
checks of several workers, ``CITYGRID_API_WORKER_HEADER=true`` makes each answer say which process gave
it (``X-Citygrid-Worker: <pid>``); off in service (a pid says nothing a client needs)."""

from __future__ import annotations

import os


class WorkerHeader:
    """Pure-ASGI: add ``x-citygrid-worker: <pid>`` to every HTTP answer."""

    def __init__(self, app):
        self.app = app
        self.header = (b"x-citygrid-worker", str(os.getpid()).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)
