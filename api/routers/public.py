"""The citizen channel (微信 / 网站): submit a request, look up its status, rate it; public notices.

Public endpoints: no personal data and no internal notes ever leave through them."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import Field
from sqlalchemy import Connection

from api import errors as api_errors
from api import offload
from api.deps import PUBLIC, client_address, get_city, get_conn
from api.limits import RateLimit
from api.validation import Body
from layers.cases import citizen
from layers.core.city import CityInfo
from layers.core.errors import InputError

router = APIRouter(prefix="/api/v1/public", tags=["public 市民"])


@router.get("/categories", summary="可选类别 Classes a citizen may choose")
def categories(_=Depends(PUBLIC)):
    return {"categories": citizen.public_categories()}


@router.post("/requests", summary="市民上报 Submit a request (location in GCJ-02 as WeChat sends it)", status_code=201,
             responses={413: {"description": "the body is larger than CITYGRID_API_MAX_SUBMIT_BYTES"},
                        429: {"description": "too many submissions from your address: retry after Retry-After s"}})
def submit(category_code: str = Form(..., max_length=40), description: str = Form(..., max_length=5000),
                 lon: float | None = Form(None), lat: float | None = Form(None),
                 crs: str = Form("GCJ-02", max_length=20), address: str | None = Form(None, max_length=500),
                 name: str | None = Form(None, max_length=80), phone: str | None = Form(None, max_length=40),
                 channel: Literal["微信", "网站", "APP"] = Form("网站"),
                 accuracy_m: float | None = Form(None, ge=0, le=100_000),
                 photo: UploadFile | None = File(None),
                 _=Depends(PUBLIC), _limit=Depends(RateLimit("submit")),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    # A plain function: FastAPI runs it in a worker thread, and the photo is checked and re-encoded in a
    # worker process (api/offload.py): neither the photo nor the write ever holds up the event loop.
    copy = None
    if photo is not None and photo.filename:
        data = photo.file.read(citizen.MAX_PHOTO_BYTES + 1)
        if data:
            copy = offload.citizen_photo(data)
    out = citizen.submit(conn, city, category_code=category_code, description=description, lon=lon, lat=lat,
                         crs=crs, address=address, photo_copy=copy, name=name, phone=phone, channel=channel,
                         accuracy_m=accuracy_m)
    return out


class Lookup(Body):
    case_no: str = Field(..., min_length=1, max_length=40)
    query_code: str = Field(..., min_length=1, max_length=20)


LIMITED = {429: {"description": "查询码错误次数过多 too many wrong query codes: retry after Retry-After seconds"},
           404: {"description": "no case with this case number and query code (an unknown number answers the same)"}}


def _limited(call):
    """The answer of a look-up under the limits on wrong codes. A wrong code is answered (404) rather
    than raised, so that the request's transaction commits the failure it counted."""
    try:
        return call()
    except citizen.TooManyAttempts as e:
        return JSONResponse({**api_errors.body(429, str(e), "too_many_requests"),
                             "retry_after": e.retry_after, "retry_at": e.retry_at.isoformat(),
                             "limit": e.scope}, status_code=429, headers={"Retry-After": str(e.retry_after)})
    except citizen.WrongCode as e:
        return JSONResponse(api_errors.coded_body(e), status_code=404)


@router.post("/status", summary="进度查询 Status of a request by case number + query code", responses=LIMITED)
def status(body: Lookup, request: Request, _=Depends(PUBLIC), _limit=Depends(RateLimit("lookup")), conn: Connection = Depends(get_conn, scope="function"),
           city: CityInfo = Depends(get_city)):
    return _limited(lambda: citizen.status(conn, city, body.case_no, body.query_code, client=client_address(request)))


class Rating(Lookup):
    rating: str = Field(..., description="satisfied 满意, basic 基本满意, unsatisfied 不满意")
    comment: str | None = Field(None, max_length=1000)


@router.post("/rate", summary="评价 Rate a closed request", responses=LIMITED)
def rate(body: Rating, request: Request, _=Depends(PUBLIC), _limit=Depends(RateLimit("lookup")), conn: Connection = Depends(get_conn, scope="function"),
         city: CityInfo = Depends(get_city)):
    if not body.rating:
        raise InputError("rating is empty")
    return _limited(lambda: citizen.rate(conn, city, body.case_no, body.query_code, body.rating, body.comment,
                                         client=client_address(request)))


@router.get("/notices", summary="便民公告 Public notices")
def notices(_=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return {"notices": citizen.notices(conn, city)}
