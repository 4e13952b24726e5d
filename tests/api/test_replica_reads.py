"""The read hook without a replica: a read shares the request's own primary transaction (one connection
per request, not two: a burst of map tiles must not take the pool twice over), and a background job
reads the primary. With a real standby: tests/citygrid/test_replica.py."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text


def test_a_read_without_replica_is_the_requests_own_transaction(engine):
    from api import readpool
    from api.deps import get_conn, get_read_conn

    app = FastAPI()
    app.state.engine = engine
    app.state.read_pool = None
    before = []

    @app.get("/probe")
    def probe(request: Request, conn: Connection = Depends(get_conn, scope="function"),
              rconn: Connection = Depends(get_read_conn, scope="function")):
        before.append(engine.pool.checkedout())
        job = readpool.job_read_conn(request)
        return {"same": conn is rconn, "pids": [conn.execute(text("SELECT pg_backend_pid()")).scalar(),
                                                  rconn.execute(text("SELECT pg_backend_pid()")).scalar()],
                "job": job is None, "where": request.state.read_from}

    with TestClient(app) as client:
        d = client.get("/probe").json()
    assert d["same"] is True and d["pids"][0] == d["pids"][1] and d["job"] is True and d["where"] == "primary"
    assert before == [1]  # one connection of the pool for the whole request
