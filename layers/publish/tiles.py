"""Vector tiles (MVT) of published layers with ST_AsMVT.

* bounding-box prefilter: the tile envelope (with its buffer) is tested with ``&&`` against a GiST
  index — on the cached EPSG:3857 copy where the layer has one (``tile_sql``, e.g. the grid's
  ``grid_cell_3857``), else against the layer's own geometry with the envelope in the working CRS;
* a process-wide LRU cache of encoded tiles, keyed on the layer's ``layer_version`` (bumped by
  triggers when the data change), so a change invalidates every cached tile of the layer at once;
* an ETag per (layer, version, form, tile) for ``If-None-Match``;
* fewer attributes at low zoom for dense layers (``LOW_ZOOM``): at z ≤ 12 a grid tile holds ~6,500 cells and
  its size (≈ 440 KB, most of it attributes) is what a cached tile costs to send and to decode; there it
  carries only the attributes that cannot be derived from the others (the cell code holds its community
  and street codes; col/row/area follow from the geometry).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import threading
import time
import weakref
from collections import OrderedDict

from sqlalchemy import Connection, text

from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.publish.catalog import _REGISTRY, Field, Filters, Layer, layer_version, select

EXTENT = 4096
BUFFER = 64
MIN_ZOOM, MAX_ZOOM = 0, 22
CACHE_TILES = 4096

#: layer → (highest zoom of the reduced form, the attributes kept there). From the next zoom up, all.
LOW_ZOOM: dict[str, tuple[int, tuple[str, ...]]] = {
    "grid_cells": (12, ("code", "partial", "responsible", "community", "street")),
}


class TileCache:
    def __init__(self, size: int = CACHE_TILES):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return v

    def peek(self, key):
        """Like get, for the fast path (counts hits only)."""
        v = self._d.get(key)
        if v is not None:
            self.hits += 1
        return v

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


cache = TileCache()


def check_tile(z: int, x: int, y: int) -> None:
    if not (MIN_ZOOM <= z <= MAX_ZOOM):
        raise InputError(f"zoom {z} is out of range {MIN_ZOOM}–{MAX_ZOOM}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise InputError(f"tile {z}/{x}/{y} does not exist: x and y must be in 0–{n - 1} at zoom {z}")


def tile_fields(layer: Layer, form: str, z: int | None) -> tuple[Field, ...]:
    """The attributes a tile of zoom ``z`` carries (all of the form's, except at low zoom, see LOW_ZOOM)."""
    fields = layer.fields_for(form)
    low = LOW_ZOOM.get(layer.name)
    if low is not None and z is not None and z <= low[0]:
        fields = tuple(f for f in fields if f.name in low[1])
    return fields


def tile_sql(layer: Layer, form: str, city: CityInfo, z: int | None = None,
             filters: Filters | None = None) -> tuple[str, dict]:
    margin = BUFFER / EXTENT
    inner, params, _ = select(layer, form, city, filters, geom_sql="s.geom", order=False)
    cols = ", ".join(f'a."{f.name}"' for f in tile_fields(layer, form, z))
    if layer.tile_sql:
        # Prefilter on the cached EPSG:3857 geometry (GiST), then join the layer's attributes.
        sql = f"""
        WITH env AS (SELECT ST_TileEnvelope(:z, :x, :y) AS e, ST_TileEnvelope(:z, :x, :y, margin => {margin}) AS m),
        t AS (SELECT fid, geom FROM ({layer.tile_sql}) c, env WHERE c.geom && env.m)
        SELECT ST_AsMVT(q, :name, {EXTENT}, 'geom', 'fid') FROM (
            SELECT a.fid, {cols}, ST_AsMVTGeom(t.geom, env.e, {EXTENT}, {BUFFER}, true) AS geom
            FROM t JOIN ({inner}) a ON a.fid = t.fid, env
        ) q WHERE q.geom IS NOT NULL"""
    else:
        sql = f"""
        WITH env AS (SELECT ST_TileEnvelope(:z, :x, :y) AS e,
                            ST_Transform(ST_TileEnvelope(:z, :x, :y, margin => {margin}), :srid) AS w)
        SELECT ST_AsMVT(q, :name, {EXTENT}, 'geom', 'fid') FROM (
            SELECT a.fid, {cols}, ST_AsMVTGeom(ST_Transform(a.geom, 3857), env.e, {EXTENT}, {BUFFER}, true) AS geom
            FROM ({inner}) a, env WHERE a.geom && env.w
        ) q WHERE q.geom IS NOT NULL"""
        params["srid"] = city.srid
    return sql, params


def get_tile(conn: Connection, city: CityInfo, layer: Layer, form: str, z: int, x: int, y: int,
             since: dt.datetime | None = None, until: dt.datetime | None = None) -> tuple[bytes, str, bool]:
    """(MVT bytes, ETag, from cache). Tiles of layers without a version are not cached.

    ``since``/``until`` keep the features whose time field is in [since, until) (layers with a time
    field only, :func:`layers.publish.catalog.select` says so): a layer that grows with its history
    (every case ever) is then drawn for a window, and its tiles cost the window's features, not the
    history's. Such tiles are not cached: the windows are any caller's choice, and they must not push
    the shared tiles out of the cache."""
    check_tile(z, x, y)
    filters = Filters(since=since, until=until) if since is not None or until is not None else None
    version = layer_version(conn, layer) if filters is None else None
    key = (city.id, layer.name, form, version, z, x, y)
    if version is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit[0], hit[1], True
    sql, params = tile_sql(layer, form, city, z, filters)
    data = conn.execute(text(sql), {**params, "z": z, "x": x, "y": y, "name": layer.name}).scalar()
    data = bytes(data or b"")
    etag = '"' + hashlib.blake2b(repr(key).encode() + data, digest_size=12).hexdigest() + '"'
    if version is not None:
        cache.put(key, (data, etag))
    return data, etag, False


# --- the connection-free fast path ----------------------------------------------------------------
# Layer versions are pushed by PostgreSQL (NOTIFY from the layer_version trigger, delivered at commit) to a
# listener thread per database, so a cached tile is served without touching the database while the data
# have not changed. Whenever the listener is not known to be healthy, callers fall back to the database.

class VersionWatch:
    CHANNEL = "citygrid_layer_version"

    def __init__(self, conninfo: str):
        self.conninfo = conninfo
        self.versions: dict[str, int] = {}
        self.ok = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="citygrid-layer-versions", daemon=True)
        self.thread.start()

    def version(self, key: str) -> int | None:
        if not self.ok:
            return None
        with self._lock:
            return self.versions.get(key, 0)

    def _run(self) -> None:
        import time

        import psycopg

        while True:
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")  # listen first, then read: no change is missed
                    rows = conn.execute("SELECT layer, version FROM layer_version").fetchall()
                    with self._lock:
                        self.versions = {r[0]: int(r[1]) for r in rows}
                    self.ok = True
                    for n in conn.notifies():
                        layer, _, v = n.payload.rpartition(" ")
                        with self._lock:
                            self.versions[layer] = max(int(v), self.versions.get(layer, 0))
            except Exception:  # connection lost: serve from the database until listening again
                self.ok = False
                time.sleep(1.0)


_watches: dict[str, VersionWatch] = {}
_watch_lock = threading.Lock()


_engine_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(engine) -> str:
    """The engine's URL as a string, rendered once per engine (the fast path asks on every request)."""
    k = _engine_keys.get(engine)
    if k is None:
        k = _engine_keys[engine] = engine.url.render_as_string(hide_password=False)
    return k


def watch_for(engine) -> VersionWatch:
    key = _key(engine)
    w = _watches.get(key)
    if w is not None and w.ok and w.thread.is_alive():
        return w
    with _watch_lock:
        w = _watches.get(key)
        if w is None or not w.thread.is_alive():
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            w = _watches[key] = VersionWatch(conninfo)
        return w


_cities: dict[tuple[str, str], tuple[CityInfo, float]] = {}
_layers: dict[tuple[int, str], Layer] = {}
CITY_TTL = 30.0


def remember(engine, slug: str, city: CityInfo, layer: Layer) -> None:
    _cities[(_key(engine), slug)] = (city, time.monotonic())
    _layers[(city.id, layer.name)] = layer


def fast_hit(engine, slug: str, name: str, z: int, x: int, y: int) -> tuple[bytes, str] | None:
    """A cached tile of a public layer for an anonymous caller, without a database round trip; None when
    the database must be asked (unknown city/layer yet, listener not healthy, not cached)."""
    check_tile(z, x, y)
    entry = _cities.get((_key(engine), slug))
    if entry is None or time.monotonic() - entry[1] > CITY_TTL:
        return None
    city = entry[0]
    layer = _REGISTRY.get(name) or _layers.get((city.id, name))
    if layer is None or layer.version_key is None or layer.access(None) != "public":
        return None
    version = watch_for(engine).version(layer.version_key)
    if version is None:
        return None
    return cache.peek((city.id, layer.name, "public", version, z, x, y))


# Encoded tiles are also kept gzip-compressed, for clients that accept it (a 300 KB grid tile at z12
# shrinks several-fold, and sending it is most of the time a cached tile costs).
GZIP_MIN_BYTES = 1024
_gzipped: OrderedDict[str, bytes] = OrderedDict()
_gzip_lock = threading.Lock()


def gzipped(etag: str, data: bytes) -> bytes:
    """The gzip form of a tile, compressed once per ETag (bounded LRU)."""
    with _gzip_lock:
        hit = _gzipped.get(etag)
        if hit is not None:
            _gzipped.move_to_end(etag)
            return hit
    gz = gzip.compress(data, compresslevel=5, mtime=0)
    with _gzip_lock:
        _gzipped[etag] = gz
        while len(_gzipped) > CACHE_TILES:
            _gzipped.popitem(last=False)
    return gz
