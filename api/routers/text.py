"""Chinese text of the cases (issue 15): class suggestions on intake (智能分拨), places found in the text
for the needs-location queue, recurring problems (热点问题) and the quality of departments' replies.
Logic lives in layers/text/."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import HTMLResponse
from pydantic import Field
from sqlalchemy import Connection

from api.deps import Allow, get_city, get_conn
from api.validation import INT64_MAX, MAX_OFFSET, Body
from citygrid import settings
from layers.cases import workflow as wf
from layers.core.city import CityInfo
from layers.text import classify, places, route
from layers.text import recurring as recurring_mod
from layers.text import replies as replies_mod

router = APIRouter(prefix="/api/v1/text", tags=["text 文本"])

INTAKE = Allow("operator", "inspector", "supervisor", "admin")
DISPATCHERS = Allow("operator", "supervisor", "admin")
SUPERVISE = Allow("supervisor", "admin")


def _date(value: str | None, field: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{field} must be a date YYYY-MM-DD, not '{value[:20]}'") from None


class SuggestIn(Body):
    description: str = Field(..., min_length=1, max_length=route.MAX_TEXT, description="来电内容 the case's text")
    title: str | None = Field(None, max_length=200)
    address: str | None = Field(None, max_length=500)


@router.post("/suggest", summary="智能分拨 Top classes of a text with probabilities, the proposed department, places")
def suggest(body: SuggestIn, _=Depends(INTAKE), conn: Connection = Depends(get_conn, scope="function"),
            city: CityInfo = Depends(get_city)):
    t = "。".join(x for x in (body.title, body.description) if x)
    return route.suggest(conn, city, t, address=body.address)


@router.get("/models", summary="文本模型 Stored text models with their cross-validated macro-F1")
def models(_=Depends(INTAKE), conn: Connection = Depends(get_conn, scope="function"),
           city: CityInfo = Depends(get_city)):
    return {"models": classify.list_models(conn, city.id), "intake_model": settings.text().model or city.slug,
            "auto_dispatch_confidence": settings.text().auto_dispatch_confidence}


@router.post("/cases/{case_id}/auto-dispatch",
             summary="自动派遣 Dispatch an accepted case when the text model agrees with its class confidently enough")
def auto_dispatch(case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(DISPATCHERS),
                  conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    try:
        return route.auto_dispatch(conn, city, case_id, user)
    except wf.Forbidden as e:
        raise HTTPException(403, f"无权限 {e}") from None


@router.get("/needs-location", summary="待定位 The needs-location queue with the places found in each case's text")
def needs_location(limit: int = Query(50, ge=1, le=200), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                   user=Depends(DISPATCHERS), conn: Connection = Depends(get_conn, scope="function"),
                   city: CityInfo = Depends(get_city)):
    return route.queue(conn, city, user, limit=limit, offset=offset)


class PlaceIn(Body):
    name: str = Field(..., min_length=1, max_length=200, description="the proposed place's name")
    kind: str = Field(..., min_length=1, max_length=20, description="its kind (road, community, poi …)")


@router.post("/cases/{case_id}/place", summary="确认定位 Confirm a place found in the case's text")
def confirm_place(body: PlaceIn, case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(DISPATCHERS),
                  conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return places.confirm(conn, city, case_id, name=body.name, kind=body.kind, actor=user)


class PlacesIn(Body):
    description: str = Field(..., min_length=1, max_length=route.MAX_TEXT)


@router.post("/places", summary="文中地点 Places named in a text (candidates with span and confidence)")
def find_places(body: PlacesIn, _=Depends(INTAKE), conn: Connection = Depends(get_conn, scope="function"),
                city: CityInfo = Depends(get_city)):
    return {"places": places.find(conn, city, body.description)}


@router.get("/recurring", summary="热点问题 The hottest recurring problems (same problem, place, period) of the last run")
def recurring(limit: int = Query(10, ge=1, le=200), _=Depends(SUPERVISE),
              conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return recurring_mod.top_groups(conn, city, limit=limit)


@router.post("/recurring/run", summary="热点问题挖掘 Group the cases of a period by text, place and time, and store the groups")
def run_recurring(until: str | None = Query(None, max_length=10, description="last day (default: latest with cases)"),
                  days: int | None = Query(None, ge=1, le=3660, description="period in days (default 3 × the pair window)"),
                  _=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"),
                  city: CityInfo = Depends(get_city)):
    res = recurring_mod.run(conn, city, until=_date(until, "until"), days=days)
    return {k: v for k, v in res.items() if k != "groups"} | {"n_groups": len(res["groups"])}


@router.get("/recurring/{group_id}/report", summary="专报 A special report of one recurring problem (HTML)",
            response_class=HTMLResponse)
def recurring_report(group_id: int = Path(..., ge=1, le=INT64_MAX), _=Depends(SUPERVISE),
                     conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return HTMLResponse(recurring_mod.report_html(conn, city, group_id))


@router.get("/spread", summary="共性/个性 Per class: spread over the city's streets (shared) or concentrated (local)")
def spread(until: str | None = Query(None, max_length=10), days: int = Query(90, ge=1, le=3660),
           _=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"),
           city: CityInfo = Depends(get_city)):
    return recurring_mod.spread(conn, city, until=_date(until, "until"), days=days)


@router.get("/replies", summary="答复质量 Department feedback scored: relevance, completeness, timeliness (weak ones by default)")
def replies(since: str | None = Query(None, max_length=10), until: str | None = Query(None, max_length=10),
            weak_only: bool = True, limit: int = Query(100, ge=1, le=1000), _=Depends(SUPERVISE),
            conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return replies_mod.department_replies(conn, city, since=_date(since, "since"), until=_date(until, "until"),
                                          weak_only=weak_only, limit=limit)
