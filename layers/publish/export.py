"""Exporting published layers to GIS files: GeoPackage, GeoJSON, zipped Shapefile, CSV (WKT), KML,
FlatGeobuf and GeoParquet, in EPSG:4326, EPSG:4490, the working CRS, GCJ-02 or BD-09.

Rows are streamed from PostGIS with a server-side cursor in batches and written through GDAL's Arrow
stream interface (``pyogrio.raw.write_arrow``), so no export is held whole in memory. Geometry is
transformed in PostGIS for EPSG targets; GCJ-02/BD-09 (not in PROJ) are applied per batch in Python.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import shutil
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely
from pyogrio import raw as ogr
from sqlalchemy import Connection, text

from citygrid import settings
from gis import crs as gcrs
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.publish.catalog import Field, Filters, Layer, select

BATCH = 20_000

FORMATS = {
    "gpkg": {"driver": "GPKG", "ext": "gpkg", "media": "application/geopackage+sqlite3", "title": "GeoPackage"},
    "geojson": {"driver": "GeoJSON", "ext": "geojson", "media": "application/geo+json", "title": "GeoJSON"},
    "shp": {"driver": "ESRI Shapefile", "ext": "zip", "media": "application/zip", "title": "Shapefile (zip)"},
    "csv": {"driver": "CSV", "ext": "csv", "media": "text/csv; charset=utf-8", "title": "CSV (WKT)"},
    "kml": {"driver": "KML", "ext": "kml", "media": "application/vnd.google-earth.kml+xml", "title": "KML"},
    "fgb": {"driver": "FlatGeobuf", "ext": "fgb", "media": "application/octet-stream", "title": "FlatGeobuf"},
    "parquet": {"driver": None, "ext": "parquet", "media": "application/vnd.apache.parquet",
                "title": "GeoParquet"},
}
MULTI_LAYER = ("gpkg",)
_GEOM_TYPE = {"Geometry": "Unknown"}
_SHP_KIND = {0: ("point", "Point"), 1: ("line", "LineString"), 2: ("polygon", "Polygon")}


def shp_field_names(names: list[str]) -> list[str]:
    """Shapefile (dBase) field names: at most 10 characters, unique regardless of case."""
    out, used = [], set()
    for n in names:
        cand, k = n[:10], 1
        while cand.lower() in used:
            suffix = f"_{k}"
            cand = n[:10 - len(suffix)] + suffix
            k += 1
        used.add(cand.lower())
        out.append(cand)
    return out


def crs_tag(crs: str) -> str:
    return crs.replace(":", "").replace("-", "")


def export_filename(city: CityInfo, name: str, fmt: str, crs: str, today: dt.date | None = None) -> str:
    today = today or dt.date.today()
    return f"{city.slug}_{name}_{today:%Y%m%d}_{crs_tag(crs)}.{FORMATS[fmt]['ext']}"


def check_request(fmt: str, crs: str, n_layers: int = 1) -> tuple[str, str]:
    """The format and CRS of an export of ``n_layers`` layers, checked (InputError); the CRS normalised."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{str(fmt)[:20]}': one of {', '.join(FORMATS)}")
    if n_layers > 1 and fmt not in MULTI_LAYER and fmt != "shp":
        raise InputError(f"several layers go out together only as {', '.join(MULTI_LAYER)} or a shp zip, not {fmt}")
    crs = gcrs.parse_crs(crs)
    if fmt == "kml" and crs != "EPSG:4326":
        raise InputError("KML is always WGS-84: use crs=EPSG:4326 with format=kml")
    return fmt, crs


def _arrow_type(f: Field, fmt: str):
    if f.type == "int":
        return pa.int64()
    if f.type == "float":
        return pa.float64()
    if f.type == "bool":
        return pa.bool_()
    if f.type == "datetime" and fmt not in ("shp", "csv", "kml"):
        return pa.timestamp("ms", tz="UTC")
    return pa.string()


def _convert(values: list, f: Field, typ) -> pa.Array:
    if pa.types.is_string(typ) and f.type in ("date", "datetime"):
        values = [None if v is None else v.isoformat() for v in values]
    elif pa.types.is_string(typ):
        values = [None if v is None else str(v) for v in values]
    return pa.array(values, type=typ)


def _schema(fields, names, fmt) -> pa.Schema:
    cols = [pa.field(n, _arrow_type(f, fmt)) for f, n in zip(fields, names, strict=True)]
    cols.append(pa.field("geometry", pa.binary(), metadata={b"ARROW:extension:name": b"geoarrow.wkb"}))
    return pa.schema(cols)


def _geom_sql(city: CityInfo, crs: str) -> str:
    if crs == city.working_crs:
        return "ST_AsBinary(s.geom)"
    if crs in (gcrs.GCJ02, gcrs.BD09):
        return "ST_AsBinary(ST_Transform(s.geom, 4326))"
    return f"ST_AsBinary(ST_Transform(s.geom, {int(crs.split(':')[1])}))"


def _batches(conn: Connection, city: CityInfo, layer: Layer, form: str, filters: Filters | None, crs: str, fmt: str,
             names: list[str], extra_where: str | None = None, counter: dict | None = None,
             on_rows: Callable[[int], None] | None = None) -> Iterator[pa.RecordBatch]:
    """The layer's rows as Arrow batches. The query is built (and bad filters refused) before returning."""
    sql, params, fields = select(layer, form, city, filters, geom_sql=_geom_sql(city, crs))
    if extra_where:
        sql = f"SELECT * FROM ({sql}) q WHERE {extra_where}"
    schema = _schema(fields, names, fmt)
    types = [schema.field(i).type for i in range(len(fields))]
    compiled = text(sql).bindparams(**params).compile(dialect=conn.dialect)
    raw = conn.connection.driver_connection  # psycopg: a named (server-side) cursor in binary format
    return _gen(raw, compiled.string, compiled.params, fields, types, schema, crs, counter, on_rows)


def _rows(raw, sql: str, params: dict, out: queue.Queue) -> None:
    """Producer thread: fetch batches from the server-side cursor while GDAL writes the previous one."""
    try:
        with raw.cursor(name=f"citygrid_export_{threading.get_ident()}", binary=True) as cur:
            cur.itersize = BATCH
            cur.execute(sql, params)
            while rows := cur.fetchmany(BATCH):
                out.put(rows)
        out.put(None)
    except BaseException as e:  # handed to the consumer
        out.put(e)


def _gen(raw, sql, params, fields, types, schema, crs, counter, on_rows=None) -> Iterator[pa.RecordBatch]:
    q: queue.Queue = queue.Queue(maxsize=2)
    producer = threading.Thread(target=_rows, args=(raw, sql, params, q), daemon=True)
    producer.start()
    try:
        while True:
            part = q.get()
            if part is None:
                break
            if isinstance(part, BaseException):
                raise part
            cols = list(zip(*part, strict=True))
            arrays = [_convert(list(cols[i + 1]), f, types[i]) for i, f in enumerate(fields)]
            wkb = cols[-1]
            if crs in (gcrs.GCJ02, gcrs.BD09):
                g = gcrs.transform_geometry(shapely.from_wkb(np.array(wkb, dtype=object)), "EPSG:4326", crs)
                wkb = shapely.to_wkb(g)
            arrays.append(pa.array(wkb, type=pa.binary()))
            if counter is not None:
                counter["rows"] = counter.get("rows", 0) + len(part)
                if on_rows is not None:
                    on_rows(counter["rows"])
            yield pa.record_batch(arrays, schema=schema)
    finally:
        while producer.is_alive():  # drain so the producer can finish (and close its cursor)
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        producer.join()


def _file_crs(crs: str) -> str | None:
    return None if crs in (gcrs.GCJ02, gcrs.BD09) else crs


def _write_gdal(path: Path, layer_name: str, batches: Iterator, schema: pa.Schema, fmt: str, crs: str,
                geometry_type: str, append: bool = False) -> None:
    opts = {}
    if fmt == "shp":
        opts["ENCODING"] = "UTF-8"  # writes the .cpg
    elif fmt == "csv":
        opts["GEOMETRY"] = "AS_WKT"
    elif fmt == "geojson":
        opts["WRITE_BBOX"] = "YES"
    failure: list[BaseException] = []

    def guarded():
        try:
            yield from batches
        except BaseException as e:  # GDAL would only say "error while accessing batch": keep the real one
            failure.append(e)
            raise

    reader = pa.RecordBatchReader.from_batches(schema, guarded())
    try:
        with warnings.catch_warnings():  # GCJ-02/BD-09 have no CRS definition a file could carry: intended
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            ogr.write_arrow(reader, str(path), layer=layer_name, driver=FORMATS[fmt]["driver"],
                            geometry_name="geometry", geometry_type=_GEOM_TYPE.get(geometry_type, geometry_type),
                            crs=_file_crs(crs), layer_options=opts, append=append)
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    if failure:
        raise failure[0]


def _write_parquet(path: Path, batches: Iterator, schema: pa.Schema, crs: str, geometry_type: str) -> None:
    import pyarrow.parquet as pq
    import pyproj

    projjson = json.loads(pyproj.CRS.from_user_input(crs).to_json()) if _file_crs(crs) else None
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "crs": projjson,
                                    "geometry_types": [] if geometry_type == "Geometry" else [geometry_type]}}}
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    with pq.ParquetWriter(str(path), schema) as w:
        for b in batches:
            w.write_batch(pa.RecordBatch.from_arrays(b.columns, schema=schema))


def export_layers(conn: Connection, city: CityInfo, layers: list[tuple[Layer, str]], fmt: str, crs: str,
                  filters: Filters | None, workdir: Path, *, bundle_name: str | None = None,
                  progress: dict | None = None, on_rows: Callable[[int], None] | None = None) -> tuple[Path, str, dict]:
    """Write the layers (each with its form: 'full' or 'public') into one file in ``workdir``.
    Returns (path, download filename, {layer: rows}). ``progress["rows"]`` counts rows as they are written;
    ``on_rows(rows so far)`` is called after each batch."""
    fmt, crs = check_request(fmt, crs, len(layers))
    name = bundle_name or layers[0][0].name
    filename = export_filename(city, name, fmt, crs)
    workdir = Path(workdir)
    out = workdir / filename
    counts: dict[str, int] = {}
    shp_files: list[Path] = []
    for k, (layer, form) in enumerate(layers):
        fields = layer.fields_for(form)
        names = [f.name for f in fields]
        if fmt == "shp":
            names = shp_field_names(names)
        counter: dict = progress if progress is not None else {}
        start_rows = counter.get("rows", 0)
        schema = _schema(fields, names, fmt)
        if fmt == "shp":
            parts = ([(None, layer.geometry_type, layer.name)] if layer.geometry_type != "Geometry" else
                     [(f"ST_Dimension(ST_GeomFromWKB(q.geom)) = {d}", gt, f"{layer.name}_{kind}")
                      for d, (kind, gt) in _SHP_KIND.items()])
            for where, gt, base in parts:
                if where is not None:  # skip empty parts of mixed layers (but keep one file at least)
                    sql, params, _ = select(layer, form, city, filters, geom_sql="ST_AsBinary(s.geom)", order=False)
                    n = conn.execute(text(f"SELECT count(*) FROM ({sql}) q WHERE {where}"), params).scalar_one()
                    if n == 0 and not (base.endswith("_point") and not shp_files):
                        continue
                p = workdir / f"{base}.shp"
                _write_gdal(p, base, _batches(conn, city, layer, form, filters, crs, fmt, names, where, counter, on_rows),
                            schema, fmt, crs, gt)
                shp_files.append(p)
        elif fmt == "parquet":
            _write_parquet(out, _batches(conn, city, layer, form, filters, crs, fmt, names, None, counter, on_rows), schema,
                           crs, layer.geometry_type)
        else:
            gdal_layer = layer.name if fmt != "kml" else re.sub(r"\W", "_", layer.title_en)
            _write_gdal(out, gdal_layer, _batches(conn, city, layer, form, filters, crs, fmt, names, None, counter, on_rows),
                        schema, fmt, crs, layer.geometry_type, append=k > 0)
        counts[layer.name] = counter.get("rows", 0) - start_rows
    if fmt == "shp":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for p in shp_files:
                for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
                    member = p.with_suffix(ext)
                    if member.exists():
                        z.write(member, member.name)
            z.writestr("README.txt", f"citygrid export {dt.date.today():%Y-%m-%d}; CRS {crs}; encoding UTF-8 "
                                     "(.cpg); field names are cut to 10 characters.\n")
    return out, filename, counts


# --- background export jobs -----------------------------------------------------------------------
# For very large exports: the file is written in a thread (its own connection) while the client polls the
# job's progress (rows written / rows matched), then downloads it. Jobs are rows of ``export_job`` and their
# files lie under ``<data dir>/exports/<id>/``, so both survive a restart. The worker holds a session
# advisory lock on its job from before the row is visible until it is finished: a 'running' job whose lock
# is free has lost its worker (the process stopped or died) and is marked failed — at start-up
# (``recover_jobs``) and whenever the job is read. Finished jobs and their files are removed after
# ``CITYGRID_EXPORT_JOB_TTL_HOURS``.

LOCK_CLASS = 0x6A0B  # first key of the jobs' advisory locks (the second: hashtext(id))
_ADMIT = 0  # second key of the lock under which a job is admitted (caps counted, row inserted)
INTERRUPTED = ("interrupted: the service stopped while the file was being written (a restart?); "
               "start the export again")
PROGRESS_EVERY = 0.2  # seconds between progress writes


def jobs_dir() -> Path:
    return settings.paths().data_dir / "exports"


@dataclass
class ExportJob:
    id: str
    owner: int | None
    city_id: int
    layers: list[str]
    format: str
    crs: str
    status: str  # running, done, failed
    rows: int
    total: int
    filename: str | None
    media: str
    bytes: int | None
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    ttl_hours: float = field(default_factory=lambda: settings.export().job_ttl_hours)

    @property
    def path(self) -> Path | None:
        return jobs_dir() / self.id / self.filename if self.filename else None

    @property
    def expires_at(self) -> dt.datetime | None:
        return self.finished_at + dt.timedelta(hours=self.ttl_hours) if self.finished_at else None

    def describe(self) -> dict:
        rows = self.rows
        if self.total:
            percent = round(min(100.0, 100.0 * rows / self.total), 1)
        else:
            percent = 100.0 if self.status == "done" else 0.0
        return {"id": self.id, "status": self.status, "rows": rows, "total": self.total, "percent": percent,
                "layers": self.layers, "format": self.format, "crs": self.crs,
                "filename": self.filename, "bytes": self.bytes, "error": self.error,
                "created_at": self.created_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


_COLS = ("id, owner_id, city_id, layers, format, crs, status, rows, total, filename, media, bytes, error, "
         "created_at, finished_at")
_LIVE = f"pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(id))"  # true: nobody holds the job's lock


def _fail_orphans(engine, job_id: str | None = None) -> list[str]:
    """Mark failed (committed) the running jobs whose worker is gone: their advisory lock is free."""
    where = "status = 'running'" + (" AND id = :id" if job_id is not None else "")
    with engine.begin() as conn:
        failed = conn.execute(text(f"""
            UPDATE export_job SET status = 'failed', error = :msg, finished_at = now(), updated_at = now()
            WHERE {where} AND {_LIVE} RETURNING id"""), {"msg": INTERRUPTED, "id": job_id}).scalars().all()
    for jid in failed:  # the half-written file
        _remove_files(jid)
    return failed


def expire_jobs(engine, ttl_hours: float | None = None) -> int:
    """Remove finished jobs older than the TTL (committed), then their files."""
    ttl = settings.export().job_ttl_hours if ttl_hours is None else ttl_hours
    with engine.begin() as conn:
        gone = conn.execute(text("""
            DELETE FROM export_job WHERE status <> 'running' AND finished_at < now() - make_interval(secs => :s)
            RETURNING id"""), {"s": ttl * 3600.0}).scalars().all()
    for job_id in gone:
        _remove_files(job_id)
    return len(gone)


def _remove_files(job_id: str) -> None:
    root = jobs_dir()
    for d in (root / job_id, root / f"{job_id}.part"):
        shutil.rmtree(d, ignore_errors=True)


def recover_jobs(engine) -> dict:
    """At start-up: jobs whose worker died are marked failed (and their partial files removed); expired
    jobs are removed."""
    return {"failed": len(_fail_orphans(engine)), "expired": expire_jobs(engine)}


class TooManyJobs(Exception):
    """A new job would pass the cap of running jobs of its city or of its client (→ 429)."""

    retry_after = 30

    def __init__(self, scope: str, cap: int):
        self.scope, self.cap = scope, cap
        what = {"city": "for this city", "client": "of yours", "all": "on this server"}[scope]
        super().__init__(f"导出任务过多 {cap} export jobs {what} are running already: try again when one has "
                         "finished (or download a finished one)")


_JOB_ENGINES: dict[tuple[str, bool], object] = {}
_JOB_ENGINES_LOCK = threading.Lock()


def job_engine(engine, *, read: bool = False):
    """The small pool of the export jobs (one per database): a job holds a connection while it writes its
    file, so the jobs must not draw on the request pool (whose exhaustion answered other requests 500)
    — and they cannot exhaust their own: at most ``max_jobs_total`` run at once (one connection each,
    as many again for progress and bookkeeping). ``read``: the pool on the read replica (read-only
    sessions, the rows only: a job's bookkeeping is on the primary)."""
    from layers.core.db import make_engine, make_read_engine

    url = engine.url.render_as_string(hide_password=False)
    with _JOB_ENGINES_LOCK:
        eng = _JOB_ENGINES.get((url, read))
        if eng is None:
            n = settings.export().max_jobs_total
            eng = _JOB_ENGINES[(url, read)] = (make_read_engine(url, pool_size=n) if read else
                                               make_engine(url, pool_size=n, max_overflow=n + 2, pool_timeout=20.0))
    return eng


def job_read_engine(read_engine):
    """:func:`job_engine` on the read replica."""
    return job_engine(read_engine, read=True)


def cache_key(conn: Connection, city: CityInfo, layers: list[tuple[Layer, str]], fmt: str, crs: str,
              request: dict | None) -> str | None:
    """The key under which an anonymous export is shared: the same layers (public forms), format, CRS and
    filters at the same layer versions give the same file. None when a layer has no version (its content
    can change unnoticed) or is not exported in its public form."""
    import hashlib

    from layers.publish.catalog import layer_version

    parts = []
    for layer, form in layers:
        version = layer_version(conn, layer)
        if version is None or form != "public":
            return None
        parts.append([layer.name, form, layer.version_key, version])
    doc = {"city": city.id, "layers": parts, "format": fmt, "crs": crs, "request": request or {}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _row_to_job(r) -> ExportJob:
    return ExportJob(id=r[0], owner=r[1], city_id=r[2], layers=list(r[3]), format=r[4], crs=r[5], status=r[6],
                     rows=int(r[7]), total=int(r[8]), filename=r[9], media=r[10], bytes=r[11], error=r[12],
                     created_at=r[13], finished_at=r[14])


def start_job(engine, city: CityInfo, layers: list[tuple[Layer, str]], fmt: str, crs: str, filters: Filters | None,
              *, owner: int | None, bundle_name: str | None = None, request: dict | None = None,
              client: str | None = None, conn: Connection | None = None, shared: bool = False,
              read_conn: Connection | None = None) -> ExportJob:
    """Validate the request now (4xx before anything starts), count the rows, record the job and export in
    a thread on a connection of its own (which holds the job's advisory lock until the job is finished).

    Admission: the jobs run on :func:`job_engine`'s pool; a job is refused (:class:`TooManyJobs`) while
    ``max_jobs_per_city`` jobs of its city, ``max_jobs_per_client`` of its ``client`` (a user, an
    address) or ``max_jobs_total`` in all are running — counted in the database under one advisory lock,
    so the caps hold across processes. ``shared`` (an anonymous export of public forms): the same export
    at the same layer versions, running or done and not expired, is answered with that job instead of a
    new one (its file is the same). ``conn``: the caller's connection, for the row count. ``read_conn``: a
    connection (not in a transaction) the job reads its rows through instead of its own on the primary —
    the read replica's, given by the API layer when the replica has the caller's writes; the rows are then
    counted there too. It is the job's from here on (closed when the job ends, or here when none starts)."""
    try:
        job, started = _start_job(engine, city, layers, fmt, crs, filters, owner=owner, bundle_name=bundle_name,
                                  request=request, client=client, conn=conn, shared=shared, read_conn=read_conn)
    except BaseException:
        if read_conn is not None:
            read_conn.close()
        raise
    if not started and read_conn is not None:
        read_conn.close()
    return job


def _start_job(engine, city, layers, fmt, crs, filters, *, owner, bundle_name, request, client, conn, shared,
               read_conn) -> tuple[ExportJob, bool]:
    import secrets

    fmt, crs = check_request(fmt, crs, len(layers))
    cfg = settings.export()
    jeng = job_engine(engine)
    expire_jobs(jeng)
    _fail_orphans(jeng)
    request = dict(request or {})

    def count_rows(c: Connection) -> int:
        n = 0
        for layer, form in layers:
            sql, params, _ = select(layer, form, city, filters, order=False)
            n += c.execute(text(f"SELECT count(*) FROM ({sql}) q"), params).scalar_one()
        return n

    if read_conn is not None:
        # the shared file's layer versions and the count from where the rows will be read (a replica that
        # lags must not file its older rows under the primary's newer versions)
        with read_conn.begin():
            key = cache_key(read_conn, city, layers, fmt, crs, request) if shared else None
            total = count_rows(read_conn)
    else:
        key = cache_key(conn, city, layers, fmt, crs, request) if (shared and conn is not None) else None
        if conn is not None:
            total = count_rows(conn)
        else:
            with jeng.begin() as c:
                total = count_rows(c)
    if key is not None:
        request["cache_key"] = key
    if client:
        request["client"] = client
    job_id = secrets.token_urlsafe(16)
    jconn = jeng.connect()
    locked = False
    try:
        jconn.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": LOCK_CLASS, "k": _ADMIT})
        if key is not None:
            hit = jconn.execute(text(f"""
                SELECT {_COLS} FROM export_job
                WHERE city_id = :city AND owner_id IS NULL AND request->>'cache_key' = :key
                  AND (status = 'running' OR (status = 'done'
                       AND finished_at > now() - make_interval(secs => :ttl)))
                ORDER BY created_at DESC LIMIT 1"""), {"city": city.id, "key": key,
                                                        "ttl": cfg.job_ttl_hours * 3600.0 / 2}).first()
            if hit is not None:
                job = _row_to_job(hit)
                if job.status == "running" or (job.path is not None and job.path.is_file()):
                    jconn.rollback()
                    jconn.close()
                    return job, False
        n_city, n_client, n_all = jconn.execute(text("""
            SELECT count(*) FILTER (WHERE city_id = :city), count(*) FILTER (WHERE request->>'client' = :client),
                   count(*)
            FROM export_job WHERE status = 'running'"""), {"city": city.id, "client": client or ""}).one()
        for n, cap, scope in ((n_all, cfg.max_jobs_total, "all"), (n_city, cfg.max_jobs_per_city, "city"),
                              (n_client if client else 0, cfg.max_jobs_per_client, "client")):
            if n >= cap:
                raise TooManyJobs(scope, cap)
        jconn.execute(text("SELECT pg_advisory_lock(:c, hashtext(:id))"), {"c": LOCK_CLASS, "id": job_id})
        locked = True
        row = jconn.execute(text(f"""
            INSERT INTO export_job (id, owner_id, city_id, layers, format, crs, request, total, media)
            VALUES (:id, :owner, :city, :layers, :fmt, :crs, CAST(:req AS jsonb), :total, :media)
            RETURNING {_COLS}"""), {"id": job_id, "owner": owner, "city": city.id, "layers": [la.name for la, _ in layers],
                                    "fmt": fmt, "crs": crs, "req": json.dumps(request, default=str),
                                    "total": total, "media": FORMATS[fmt]["media"]}).one()
        jconn.commit()
        job = _row_to_job(row)
        threading.Thread(target=_run_job, args=(jeng, jconn, job, city, layers, fmt, crs, filters, bundle_name,
                                                read_conn),
                         name=f"citygrid-export-{job_id[:6]}", daemon=True).start()
    except BaseException:
        if locked:
            _release(jconn, job_id)
        else:
            jconn.rollback()
            jconn.close()
        raise
    return job, True


def _release(conn: Connection, job_id: str) -> None:
    try:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:c, hashtext(:id))"), {"c": LOCK_CLASS, "id": job_id})
        conn.commit()
    except Exception:  # the connection is broken: closing it releases the lock anyway
        conn.invalidate()
    finally:
        conn.close()


def _run_job(engine, conn: Connection, job: ExportJob, city: CityInfo, layers, fmt, crs, filters, bundle_name,
             read_conn: Connection | None = None) -> None:
    """The job's thread: rows read through ``read_conn`` (the replica's) or else ``conn`` (the job's own
    connection on the primary, which holds its advisory lock and records its progress and end)."""
    part = jobs_dir() / f"{job.id}.part"
    src = read_conn if read_conn is not None else conn
    last = [0.0]

    def on_rows(rows: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            with engine.begin() as c:
                c.execute(text("UPDATE export_job SET rows = :r, updated_at = now() WHERE id = :id"),
                          {"r": rows, "id": job.id})

    try:
        part.mkdir(parents=True, exist_ok=True)
        progress: dict = {"rows": 0}
        with src.begin():
            path, filename, _ = export_layers(src, city, layers, fmt, crs, filters, part, bundle_name=bundle_name,
                                              progress=progress, on_rows=on_rows)
        if read_conn is not None:
            read_conn.close()  # back to the jobs' replica pool before the file is moved
        final = jobs_dir() / job.id
        final.mkdir(parents=True, exist_ok=True)
        path.replace(final / filename)  # the finished file only, moved in one step
        shutil.rmtree(part, ignore_errors=True)
        size = (final / filename).stat().st_size
        conn.execute(text("""
            UPDATE export_job SET status = 'done', rows = :r, filename = :f, bytes = :b, finished_at = now(),
                   updated_at = now() WHERE id = :id"""), {"r": progress["rows"], "f": filename, "b": size, "id": job.id})
        conn.commit()
    except Exception as e:  # reported to the client by the job's status
        try:
            conn.rollback()
            conn.execute(text("""
                UPDATE export_job SET status = 'failed', error = :e, finished_at = now(), updated_at = now()
                WHERE id = :id AND status = 'running'"""), {"e": f"{type(e).__name__}: {str(e)[:300]}", "id": job.id})
            conn.commit()
        except Exception:  # the database is gone: the lock goes with the connection, start-up marks it failed
            pass
        _remove_files(job.id)
    finally:
        if read_conn is not None:
            read_conn.close()  # closing twice is harmless
        _release(conn, job.id)


def get_job(conn: Connection, job_id: str, owner: int | None) -> ExportJob:
    """The job as the caller may see it (someone else's is not found); a running job whose worker is gone
    is marked failed first; an expired one is removed."""
    from layers.core.errors import NotFound

    job_id = str(job_id)
    ttl = settings.export().job_ttl_hours
    missing = NotFound(f"no export job '{job_id[:40]}' (finished jobs are kept for {ttl:g} h)")
    r = conn.execute(text(f"SELECT {_COLS}, now() FROM export_job WHERE id = :id"), {"id": job_id}).first()
    if r is None:
        raise missing
    job, now = _row_to_job(r), r[-1]  # now(): the transaction's time, fetched with the row
    if job.owner is not None and job.owner != owner:
        raise missing
    # changes are committed on their own (the request's transaction is rolled back when it answers 4xx)
    if job.status == "running" and _fail_orphans(conn.engine, job_id):
        job = _row_to_job(conn.execute(text(f"SELECT {_COLS} FROM export_job WHERE id = :id"), {"id": job_id}).one())
    if job.status != "running" and job.expires_at is not None and job.expires_at <= now:
        expire_jobs(conn.engine, ttl)
        raise missing
    return job
