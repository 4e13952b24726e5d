"""Published layers: the catalog, exports to GIS files, vector tiles and OGC API – Features.

These routes are declared PUBLIC because public layers are readable without a token; each checks the
layer's own roles (401 without a valid token, 403 for a role not allowed) and serves anonymous callers
only the layer's public form (no personal data).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path as FsPath

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from sqlalchemy import Connection
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api import readpool
from api.deps import (
    PUBLIC,
    client_address,
    get_city,
    get_conn,
    get_read_conn,
    optional_user,
    session_cookie,
)
from api.limits import RateLimit
from api.tile_answer import tile_response
from api.validation import MAX_OFFSET
from citygrid import settings
from layers.core import users as lusers
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound
from layers.publish import catalog as lcat
from layers.publish import export as lexp
from layers.publish import ogc as logc
from layers.publish import tiles as ltiles

log = logging.getLogger("citygrid")


@asynccontextmanager
async def _lifespan(app):
    """At start-up: background exports whose worker died with the previous process are marked failed, and
    expired ones removed (runs inside the app's lifespan, which made the engine)."""
    try:
        done = await run_in_threadpool(lexp.recover_jobs, app.state.engine)
        if done["failed"] or done["expired"]:
            log.info("export jobs: %(failed)d interrupted marked failed, %(expired)d expired removed", done)
    except Exception as e:  # the database may be down at start-up: jobs are checked again when read
        log.warning("export jobs not recovered at start-up: %s", e)
    yield


router = APIRouter(prefix="/api/v1", tags=["layers 图层 / OGC API"], lifespan=_lifespan)

CRS_HELP = "EPSG:4326, EPSG:4490, the working CRS (e.g. EPSG:4549), GCJ-02 or BD-09"


def caller(request: Request, conn: Connection = Depends(get_conn, scope="function"),
           authorization: str | None = Header(None, include_in_schema=False)) -> lusers.User | None:
    """The caller if a valid bearer token or session cookie is sent, else None (anonymous)."""
    return optional_user(request, conn, authorization)


def limit_anonymous_export(request: Request, user=Depends(caller)) -> None:
    """Anonymous exports count against the client address's export rate limit (429 when over)."""
    if user is None:
        RateLimit("export")(request)


def client_key(request: Request, user: lusers.User | None) -> str:
    """Who a job is counted for: the user, or an anonymous caller's address (kept only as a keyed
    digest: no address is stored)."""
    import hashlib

    from layers.core.sessions import address_source

    if user is not None:
        return f"user:{user.id}"
    return "addr:" + hashlib.sha256(("citygrid-export:" + address_source(client_address(request))).encode()).hexdigest()[:24]


def _form(layer: lcat.Layer, user: lusers.User | None) -> str:
    form = layer.access(user.role if user else None)
    if form is None:
        if user is None:
            raise HTTPException(401, f"未登录 layer '{layer.name}' needs a token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        raise HTTPException(403, f"无权限 role '{user.role}' may not read layer '{layer.name}'; allowed: "
                                 f"{', '.join(sorted(layer.roles))}")
    return form


@router.get("/layers", summary="图层目录 The catalog of published layers you may read")
def layers(_=Depends(PUBLIC), user=Depends(caller), conn: Connection = Depends(get_conn, scope="function"),
           city: CityInfo = Depends(get_city)):
    return {"city": city.slug, "working_crs": city.working_crs,
            "formats": {k: v["title"] for k, v in lexp.FORMATS.items()},
            "crs": ["EPSG:4326", "EPSG:4490", city.working_crs, "GCJ-02"],
            "themes": lcat.themes(),
            "layers": lcat.list_layers(conn, city, user.role if user else None)}


def _send(path: FsPath, filename: str, media: str, tmp: str, counts: dict) -> FileResponse:
    headers = {"X-Feature-Count": ",".join(f"{k}={v}" for k, v in counts.items()), "Cache-Control": "no-store"}
    return FileResponse(path, media_type=media, filename=filename, headers=headers,
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


def _reader(conn: Connection, rconn: Connection, layers) -> Connection:
    """The read replica's connection (api/readpool.py) for layers read as stored; the primary's for a
    computed layer, whose rows ``lcat.ready`` has just brought up to date there."""
    return conn if any(layer.refresh is not None for layer in layers) else rconn


def _export(conn, city, pairs, format, crs, bbox, bbox_crs, since, until, class_code, area, bundle=None):
    fmt, out_crs = lexp.check_request(format, crs)
    filters = lcat.build_filters(city, bbox=bbox, bbox_crs=bbox_crs, since=since, until=until,
                                 class_code=class_code, area=area)
    tmp = tempfile.mkdtemp(prefix="citygrid-export-")
    try:
        path, filename, counts = lexp.export_layers(conn, city, pairs, fmt, out_crs, filters, FsPath(tmp),
                                                    bundle_name=bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _send(path, filename, lexp.FORMATS[fmt]["media"], tmp, counts)


@router.get("/layers/{name}/export", summary="导出图层 Export a layer as a GIS file (dated name)",
            response_class=FileResponse)
def export_layer(name: str = Path(..., max_length=60),
                 format: str = Query("gpkg", description="gpkg, geojson, shp, csv, kml, fgb or parquet"),
                 crs: str = Query("EPSG:4490", description="output CRS: " + CRS_HELP),
                 bbox: str | None = Query(None, description="minx,miny,maxx,maxy in bbox-crs"),
                 bbox_crs: str = Query("EPSG:4326", alias="bbox-crs"),
                 since: str | None = Query(None, description="time filter start (ISO date/time)"),
                 until: str | None = Query(None, description="time filter end (exclusive)"),
                 class_code: str | None = Query(None, alias="class", description="class code prefix"),
                 area: str | None = Query(None, description="admin area (6/9/12 digits) or cell code prefix"),
                 _=Depends(PUBLIC), user=Depends(caller), _limit=Depends(limit_anonymous_export),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
                 rconn: Connection = Depends(get_read_conn, scope="function")):
    layer = lcat.get_layer(conn, city, name)
    form = _form(layer, user)
    lcat.ready(conn, city, layer)
    return _export(_reader(conn, rconn, [layer]), city, [(layer, form)], format, crs, bbox, bbox_crs, since, until,
                   class_code, area)


@router.get("/themes/{theme}/export", summary="导出专题 A whole theme as one multi-layer GeoPackage",
            response_class=FileResponse)
def export_theme(theme: str = Path(..., max_length=40), format: str = Query("gpkg"),
                 crs: str = Query("EPSG:4490", description="output CRS: " + CRS_HELP),
                 bbox: str | None = None, bbox_crs: str = Query("EPSG:4326", alias="bbox-crs"),
                 area: str | None = None,
                 _=Depends(PUBLIC), user=Depends(caller), _limit=Depends(limit_anonymous_export),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
                 rconn: Connection = Depends(get_read_conn, scope="function")):
    names = lcat.themes().get(theme)
    if not names:
        raise NotFound(f"no theme '{theme[:40]}': one of {', '.join(lcat.themes())}")
    pairs = []
    for n in names:
        layer = lcat.get_layer(conn, city, n)
        form = layer.access(user.role if user else None)
        if form:
            pairs.append((lcat.ready(conn, city, layer), form))
    if not pairs:
        raise HTTPException(401 if user is None else 403, f"no layer of theme '{theme}' is readable for you",
                            headers={"WWW-Authenticate": "Bearer"} if user is None else None)
    return _export(_reader(conn, rconn, [p[0] for p in pairs]), city, pairs, format, crs, bbox, bbox_crs, None, None,
                   None, area, bundle=f"theme_{theme}")


@router.post("/layers/{name}/export-jobs", status_code=202,
             summary="后台导出 Start a background export (poll its progress, then download)",
             responses={429: {"description": "too many export jobs running (of the city, or yours), or too many "
                                             "anonymous exports from your address: retry after Retry-After s"}})
def start_export_job(request: Request, name: str = Path(..., max_length=60),
                     format: str = Query("gpkg", description="gpkg, geojson, shp, csv, kml, fgb or parquet"),
                     crs: str = Query("EPSG:4490", description="output CRS: " + CRS_HELP),
                     bbox: str | None = None, bbox_crs: str = Query("EPSG:4326", alias="bbox-crs"),
                     since: str | None = None, until: str | None = None,
                     class_code: str | None = Query(None, alias="class"), area: str | None = None,
                     _=Depends(PUBLIC), user=Depends(caller), _limit=Depends(limit_anonymous_export),
                     conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    layer = lcat.get_layer(conn, city, name)
    form = _form(layer, user)
    lcat.ready(conn, city, layer)  # the job reads in its own transaction: the rows are brought up to date now
    filters = lcat.build_filters(city, bbox=bbox, bbox_crs=bbox_crs, since=since, until=until,
                                 class_code=class_code, area=area)
    asked = {"bbox": bbox, "bbox_crs": bbox_crs, "since": since, "until": until, "class": class_code, "area": area}
    # the job reads the replica (from the jobs' own pool there) when it has the caller's writes and the layer
    # is stored; a computed layer, just brought up to date on the primary, is read there
    read_conn = readpool.job_read_conn(request, lexp.job_read_engine) if layer.refresh is None else None
    try:
        job = lexp.start_job(request.app.state.engine, city, [(layer, form)], format, crs, filters,
                             owner=user.id if user else None, request={k: v for k, v in asked.items() if v is not None},
                             client=client_key(request, user), conn=conn, shared=user is None, read_conn=read_conn)
    except lexp.TooManyJobs as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    return _job_doc(job)


def _job_doc(job: lexp.ExportJob) -> dict:
    return {**job.describe(), "status_url": f"/api/v1/export-jobs/{job.id}",
            "file_url": f"/api/v1/export-jobs/{job.id}/file"}


@router.get("/export-jobs/{job_id}", summary="后台导出进度 A background export's progress")
def export_job(job_id: str = Path(..., max_length=40), _=Depends(PUBLIC), user=Depends(caller),
               conn: Connection = Depends(get_conn, scope="function")):
    return _job_doc(lexp.get_job(conn, job_id, user.id if user else None))


@router.get("/export-jobs/{job_id}/file", summary="下载后台导出 Download a finished background export",
            response_class=FileResponse)
def export_job_file(job_id: str = Path(..., max_length=40), _=Depends(PUBLIC), user=Depends(caller),
                    conn: Connection = Depends(get_conn, scope="function")):
    job = lexp.get_job(conn, job_id, user.id if user else None)
    if job.status != "done":
        raise HTTPException(409, f"export job {job.id} is {job.status}"
                                 + (f": {job.error}" if job.error else f" ({job.describe()['percent']} %)"))
    if job.path is None or not job.path.is_file():
        raise HTTPException(410, f"export job {job.id}: its file is no longer on this server; "
                                 "start the export again")
    return FileResponse(job.path, media_type=job.media, filename=job.filename, headers={"Cache-Control": "no-store"})



def _tile_from_db(engine, slug: str, name: str, z: int, x: int, y: int, authorization: str | None,
                  request: Request | None = None, window: tuple = (None, None)):
    from layers.core import city as lcity

    with engine.begin() as conn:
        user = optional_user(request, conn, authorization)
        city = lcity.get_city(conn, slug)
        layer = lcat.get_layer(conn, city, name)
        form = _form(layer, user)
        lcat.ready(conn, city, layer)
        with readpool.reading(engine, conn, replica_ok=layer.refresh is None) as rconn:  # the read replica
            data, etag, hit = ltiles.get_tile(rconn, city, layer, form, z, x, y, *window)
    ltiles.watch_for(engine)  # start listening for layer changes (the fast path needs it)
    ltiles.remember(engine, slug, city, layer)
    return data, etag, hit, form == "public" and user is None


@router.get("/tiles/{name}/{z}/{x}/{y}.mvt", summary="矢量瓦片 Vector tile (MVT, EPSG:3857 XYZ)",
            response_class=Response, responses={200: {"content": {"application/vnd.mapbox-vector-tile": {}}}})
async def tile(request: Request, name: str = Path(..., max_length=60), z: int = Path(..., ge=0, le=ltiles.MAX_ZOOM),
               x: int = Path(..., ge=0, le=2**ltiles.MAX_ZOOM - 1), y: int = Path(..., ge=0, le=2**ltiles.MAX_ZOOM - 1), city: str | None = Query(None, max_length=40, description="城市 City slug"),
               if_none_match: str | None = Header(None, include_in_schema=False),
               authorization: str | None = Header(None, include_in_schema=False),
               accept_encoding: str | None = Header(None, include_in_schema=False),
               datetime: str | None = Query(None, max_length=80, description=(
                   "时间窗 Only features whose time lies in this window (OGC datetime: an instant or start/end, "
                   "'..' for an open end); layers with a time field only, e.g. cases: "
                   "2026-10-01T00:00:00+08:00/2026-11-01T00:00:00+08:00")),
               _=Depends(PUBLIC)):
    engine = request.app.state.engine
    slug = city or settings.api().default_city
    window = logc.parse_datetime(datetime)  # a malformed window costs no database work
    if not authorization and not session_cookie(request) and not datetime:
        hit = ltiles.fast_hit(engine, slug, name, z, x, y)
        if hit is not None:
            return tile_response(hit[0], hit[1], True, True, if_none_match, accept_encoding)
    data, etag, hit, public = await run_in_threadpool(_tile_from_db, engine, slug, name, z, x, y, authorization,
                                                      request, window)
    return tile_response(data, etag, hit, public, if_none_match, accept_encoding)


@router.get("/tiles/{name}/tilejson.json", summary="TileJSON 3.0 of a layer's vector tiles (MapLibre, QGIS)")
def tilejson(request: Request, name: str = Path(..., max_length=60), _=Depends(PUBLIC), user=Depends(caller),
             conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
             datetime: str | None = Query(None, max_length=80, description="时间窗 the tiles' window (see the tiles)")):
    from urllib.parse import quote

    layer = lcat.get_layer(conn, city, name)
    form = _form(layer, user)
    bounds = logc.extent(conn, city)
    base = str(request.base_url).rstrip("/")
    q = _q(request)
    if datetime:  # checked here, so that a client learns of a bad window before asking for tiles
        logc.layer_window(layer, datetime)
        q += ("&" if q else "?") + "datetime=" + quote(datetime, safe="/:.")
    return {"tilejson": "3.0.0", "name": f"{layer.title} {layer.title_en}", "scheme": "xyz",
            "tiles": [f"{base}/api/v1/tiles/{layer.name}/{{z}}/{{x}}/{{y}}.mvt{q}"],
            "minzoom": ltiles.MIN_ZOOM, "maxzoom": ltiles.MAX_ZOOM, "bounds": bounds,
            "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 12],
            "vector_layers": [{"id": layer.name, "description": _tile_description(layer),
                               "fields": {f.name: f.title or f.type for f in layer.fields_for(form)}}]}


def _tile_description(layer: lcat.Layer) -> str:
    low = ltiles.LOW_ZOOM.get(layer.name)
    if low is None:
        return layer.description
    return (f"{layer.description} (zoom ≤ {low[0]}: only {', '.join(low[1])}; "
            f"every field from zoom {low[0] + 1})").lstrip()


# --- OGC API – Features ---------------------------------------------------------------------------

OGC = "/api/v1/ogc"


def _wants_html(request: Request, f: str | None) -> bool:
    if f:
        if f not in ("json", "html", "geojson"):
            raise InputError(f"f must be json or html, not '{f[:20]}'")
        return f == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept


def _q(request: Request) -> str:
    from urllib.parse import quote

    city = request.query_params.get("city")
    return f"?city={quote(city)}" if city else ""


def _respond(request: Request, f: str | None, title: str, doc: dict, media: str = "application/json",
             headers: dict | None = None):
    if _wants_html(request, f):
        return HTMLResponse(logc.to_html(title, doc), headers=headers)
    return JSONResponse(doc, media_type=media, headers=headers)


@router.get("/ogc", summary="OGC API – Features landing page")
def ogc_landing(request: Request, f: str | None = None, _=Depends(PUBLIC), city: CityInfo = Depends(get_city)):
    return _respond(request, f, "citygrid OGC API", logc.landing(str(request.base_url).rstrip("/") + OGC, _q(request), city))


@router.get("/ogc/conformance", summary="OGC API – Features conformance")
def ogc_conformance(request: Request, f: str | None = None, _=Depends(PUBLIC)):
    return _respond(request, f, "Conformance", {"conformsTo": logc.CONFORMANCE})


@router.get("/ogc/collections", summary="OGC API – Features collections (the layers you may read)")
def ogc_collections(request: Request, f: str | None = None,
                    _=Depends(PUBLIC), user=Depends(caller), conn: Connection = Depends(get_conn, scope="function"),
                    city: CityInfo = Depends(get_city)):
    base = str(request.base_url).rstrip("/") + OGC
    bbox = logc.extent(conn, city)
    cols = []
    for d in lcat.list_layers(conn, city, user.role if user else None):
        layer = lcat.get_layer(conn, city, d["name"])
        cols.append(logc.collection(layer, d["form"], base, _q(request), city, bbox))
    doc = {"collections": cols, "links": [{"href": f"{base}/collections{_q(request)}", "rel": "self",
                                           "type": "application/json"}]}
    return _respond(request, f, "Collections 图层", doc)


@router.get("/ogc/collections/{name}", summary="OGC API – Features collection")
def ogc_collection(request: Request, name: str = Path(..., max_length=60), f: str | None = None,
                   _=Depends(PUBLIC), user=Depends(caller), conn: Connection = Depends(get_conn, scope="function"),
                   city: CityInfo = Depends(get_city)):
    layer = lcat.get_layer(conn, city, name)
    form = _form(layer, user)
    base = str(request.base_url).rstrip("/") + OGC
    return _respond(request, f, layer.title, logc.collection(layer, form, base, _q(request), city,
                                                             logc.extent(conn, city)))


@router.get("/ogc/collections/{name}/queryables", summary="OGC API – Features queryables (JSON Schema)")
def ogc_queryables(request: Request, name: str = Path(..., max_length=60), _=Depends(PUBLIC), user=Depends(caller),
                   conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    layer = lcat.get_layer(conn, city, name)
    form = _form(layer, user)
    types = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
             "bool": {"type": "boolean"}, "date": {"type": "string", "format": "date"},
             "datetime": {"type": "string", "format": "date-time"}}
    props = {f.name: {**types[f.type], "title": f.title or f.name} for f in layer.fields_for(form)}
    props["geometry"] = {"$ref": "https://geojson.org/schema/Geometry.json"}
    return JSONResponse({"$schema": "https://json-schema.org/draft/2019-09/schema",
                         "$id": str(request.url), "type": "object", "title": layer.title, "properties": props},
                        media_type="application/schema+json")


@router.get("/ogc/collections/{name}/items", summary="OGC API – Features items (bbox, datetime, limit, offset, crs)")
def ogc_items(request: Request, name: str = Path(..., max_length=60), f: str | None = None,
              bbox: str | None = None, bbox_crs: str = Query(logc.CRS84, alias="bbox-crs"),
              datetime: str | None = Query(None, max_length=80), limit: int = Query(10, ge=1, le=logc.MAX_LIMIT),
              offset: int = Query(0, ge=0, le=MAX_OFFSET), crs: str | None = None,
              _=Depends(PUBLIC), user=Depends(caller), conn: Connection = Depends(get_conn, scope="function"),
              city: CityInfo = Depends(get_city), rconn: Connection = Depends(get_read_conn, scope="function")):
    layer = lcat.ready(conn, city, lcat.get_layer(conn, city, name))
    form = _form(layer, user)
    base = str(request.base_url).rstrip("/") + OGC
    doc, content_crs = logc.items(_reader(conn, rconn, [layer]), city, layer, form, base=base, q=_q(request), bbox=bbox, bbox_crs=bbox_crs,
                                  datetime_=datetime, limit=limit, offset=offset, crs=crs)
    return _respond(request, f, layer.title, doc, "application/geo+json", {"Content-Crs": f"<{content_crs}>"})


@router.get("/ogc/collections/{name}/items/{fid}", summary="OGC API – Features one item")
def ogc_item(request: Request, name: str = Path(..., max_length=60), fid: str = Path(..., max_length=20),
             f: str | None = None, crs: str | None = None,
             _=Depends(PUBLIC), user=Depends(caller), conn: Connection = Depends(get_conn, scope="function"),
             city: CityInfo = Depends(get_city), rconn: Connection = Depends(get_read_conn, scope="function")):
    layer = lcat.ready(conn, city, lcat.get_layer(conn, city, name))
    form = _form(layer, user)
    doc, content_crs = logc.item(_reader(conn, rconn, [layer]), city, layer, form, fid, crs)
    return _respond(request, f, layer.title, doc, "application/geo+json", {"Content-Crs": f"<{content_crs}>"})
