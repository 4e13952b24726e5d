"""The message catalog of the pages (static/common/i18n.js): every code a page shows, in Chinese and
English, made from the vocabularies, the class catalog, the city's admin areas and departments and the
error catalog (layers/cases/labels.py). Public: it holds words, no case data and no personal data."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import Connection

from api.deps import PUBLIC, get_city, get_conn
from layers.cases import labels
from layers.core.city import CityInfo

router = APIRouter(prefix="/api/v1", tags=["i18n 界面文字"])


@router.get("/i18n", summary="界面词表 The pages' message catalog: codes → Chinese and English words")
def i18n(_=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function"),
         city: CityInfo = Depends(get_city)):
    return JSONResponse(labels.page_catalog(conn, city), headers={"Cache-Control": "max-age=300"})
