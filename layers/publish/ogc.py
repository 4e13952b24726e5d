"""OGC API – Features (Part 1 Core, GeoJSON, HTML; Part 2 CRS by reference) over the layer catalog.

A small implementation of our own rather than tipg: it serves exactly the catalog's layers with the
catalog's public/full forms, so this project's role checks stay in front of every collection. The
documents are built here; ``api/routers/layers.py`` serves them.
"""

from __future__ import annotations

import datetime as dt
import html
import json

import shapely
from shapely.geometry import mapping
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound
from layers.publish.catalog import Filters, Layer, build_filters, parse_time, select

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
]
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
MAX_LIMIT = 10_000


def crs_uri(crs: str) -> str:
    if crs == "EPSG:4326":
        return CRS84
    if crs.startswith("EPSG:"):
        return f"http://www.opengis.net/def/crs/EPSG/0/{crs.split(':')[1]}"
    return crs


def supported_crs(city: CityInfo) -> list[str]:
    return [CRS84, crs_uri("EPSG:4490"), crs_uri(city.working_crs), crs_uri("EPSG:3857")]


def landing(base: str, q: str, city: CityInfo) -> dict:
    return {"title": f"citygrid {city.name} 网格化城市管理 OGC API – Features",
            "description": "单元网格、行政区划、城市部件等已发布图层 Published layers of citygrid",
            "links": [{"href": f"{base}{q}", "rel": "self", "type": "application/json", "title": "this document"},
                      {"href": f"{base}/conformance{q}", "rel": "conformance", "type": "application/json",
                       "title": "Conformance"},
                      {"href": f"{base}/collections{q}", "rel": "data", "type": "application/json",
                       "title": "Collections"},
                      {"href": "/openapi.json", "rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0",
                       "title": "OpenAPI"},
                      {"href": "/docs", "rel": "service-doc", "type": "text/html", "title": "API docs"}]}


def extent(conn: Connection, city: CityInfo) -> list[float]:
    b = conn.execute(text("""SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
                             FROM (SELECT ST_Extent(ST_Transform(boundary, 4326)) e FROM city WHERE id = :c) s"""),
                     {"c": city.id}).one()
    return [round(v, 6) for v in b]


def collection(layer: Layer, form: str, base: str, q: str, city: CityInfo, bbox: list[float]) -> dict:
    return {"id": layer.name, "title": f"{layer.title} {layer.title_en}", "description": layer.description,
            "itemType": "feature", "crs": supported_crs(city), "storageCrs": crs_uri(city.working_crs),
            "extent": {"spatial": {"bbox": [bbox], "crs": CRS84}},
            "links": [{"href": f"{base}/collections/{layer.name}{q}", "rel": "self", "type": "application/json"},
                      {"href": f"{base}/collections/{layer.name}/items{q}", "rel": "items",
                       "type": "application/geo+json", "title": "Items"},
                      {"href": f"{base}/collections/{layer.name}/items{q}{'&' if q else '?'}f=html", "rel": "items",
                       "type": "text/html", "title": "Items (HTML)"},
                      {"href": f"{base}/collections/{layer.name}/queryables{q}",
                       "rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables", "type": "application/schema+json",
                       "title": "Queryables"}],
            "x-citygrid": {"form": form, "geometry_type": layer.geometry_type,
                           "fields": [{"name": f.name, "type": f.type, "title": f.title} for f in layer.fields_for(form)]}}


def parse_datetime(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """OGC ``datetime``: an instant, or ``start/end`` with ``..`` for open ends."""
    if not value:
        return None, None
    if "/" in value:
        a, _, b = value.partition("/")
        since = None if a in ("", "..") else parse_time(a, "datetime start")
        until = None if b in ("", "..") else parse_time(b, "datetime end")
        if since and until and since > until:
            raise InputError("datetime: the start is after the end")
        return since, (until + dt.timedelta(microseconds=1)) if until else None
    t = parse_time(value, "datetime")
    return t, t + dt.timedelta(seconds=1)


def layer_window(layer: Layer, value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An OGC ``datetime`` for ``layer`` (items, tiles, TileJSON): refused for a layer without a time field."""
    if value and layer.time_field is None:
        raise InputError(f"collection {layer.name} has no time field: datetime does not apply")
    return parse_datetime(value)


def items(conn: Connection, city: CityInfo, layer: Layer, form: str, *, base: str, q: str, bbox: str | None,
          bbox_crs: str, datetime_: str | None, limit: int, offset: int, crs: str | None) -> tuple[dict, str]:
    if not (1 <= limit <= MAX_LIMIT):
        raise InputError(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise InputError("offset must be ≥ 0")
    out_crs = gcrs.parse_crs(crs) if crs else "EPSG:4326"
    filters: Filters = build_filters(city, bbox=bbox, bbox_crs=bbox_crs)
    if datetime_:
        filters.since, filters.until = layer_window(layer, datetime_)
    sql, params, fields = select(layer, form, city, filters, geom_sql="ST_AsBinary(s.geom)")
    matched = conn.execute(text(f"SELECT count(*) FROM ({sql}) q"), params).scalar_one()
    rows = conn.execute(text(sql + " LIMIT :lim OFFSET :off"), {**params, "lim": limit, "off": offset}).all()
    feats = []
    if rows:
        geoms = shapely.from_wkb([bytes(r[-1]) for r in rows])
        geoms = gcrs.transform_geometry(geoms, city.working_crs, out_crs)
        for r, g in zip(rows, geoms, strict=True):
            props = {}
            for i, f in enumerate(fields):
                v = r[i + 1]
                props[f.name] = v.isoformat() if isinstance(v, dt.date | dt.datetime) else v
            feats.append({"type": "Feature", "id": r[0], "geometry": mapping(g), "properties": props})
    links = [{"href": f"{base}/collections/{layer.name}/items{q}", "rel": "self", "type": "application/geo+json"},
             {"href": f"{base}/collections/{layer.name}{q}", "rel": "collection", "type": "application/json"}]
    if offset + len(rows) < matched:
        sep = "&" if q else "?"
        nxt = f"{base}/collections/{layer.name}/items{q}{sep}limit={limit}&offset={offset + limit}"
        if bbox:
            nxt += f"&bbox={bbox}&bbox-crs={bbox_crs}"
        if datetime_:
            nxt += f"&datetime={datetime_}"
        if crs:
            nxt += f"&crs={crs}"
        links.append({"href": nxt, "rel": "next", "type": "application/geo+json"})
    doc = {"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(feats),
           "timeStamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "features": feats,
           "links": links}
    return doc, crs_uri(out_crs)


def item(conn: Connection, city: CityInfo, layer: Layer, form: str, fid: str, crs: str | None) -> tuple[dict, str]:
    try:
        fid_i = int(fid)
    except ValueError:
        raise NotFound(f"no feature '{fid[:40]}' in {layer.name}") from None
    out_crs = gcrs.parse_crs(crs) if crs else "EPSG:4326"
    sql, params, fields = select(layer, form, city, geom_sql="ST_AsBinary(s.geom)", order=False)
    row = conn.execute(text(f"SELECT * FROM ({sql}) q WHERE q.fid = :fid"), {**params, "fid": fid_i}).first()
    if row is None:
        raise NotFound(f"no feature {fid_i} in {layer.name}")
    g = gcrs.transform_geometry(shapely.from_wkb(bytes(row[-1])), city.working_crs, out_crs)
    props = {f.name: (row[i + 1].isoformat() if isinstance(row[i + 1], dt.date | dt.datetime) else row[i + 1])
             for i, f in enumerate(fields)}
    return {"type": "Feature", "id": row[0], "geometry": mapping(g), "properties": props}, crs_uri(out_crs)


def to_html(title: str, doc: dict) -> str:
    """A plain HTML view of a document (collections as a list, items as a table)."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if "collections" in doc:
        body.append("<ul>" + "".join(
            f'<li><a href="{esc(next(lk["href"] for lk in c["links"] if lk["rel"] == "items"))}&f=html">'
            f"{esc(c['id'])}</a> — {esc(c['title'])}</li>" for c in doc["collections"]) + "</ul>")
    elif "features" in doc:
        feats = doc["features"]
        keys = list(feats[0]["properties"]) if feats else []
        body.append(f"<p>numberMatched {doc['numberMatched']} · numberReturned {doc['numberReturned']}</p>")
        body.append("<table border=1><tr><th>id</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>" +
                    "".join("<tr><td>" + esc(str(f["id"])) + "</td>" +
                            "".join(f"<td>{esc(str(f['properties'][k]))}</td>" for k in keys) + "</tr>"
                            for f in feats) + "</table>")
    else:
        body.append(f"<pre>{esc(json.dumps(doc, ensure_ascii=False, indent=1))}</pre>")
    links = doc.get("links", [])
    body.append("<ul>" + "".join(f'<li><a href="{esc(lk["href"])}">{esc(lk.get("title") or lk["rel"])}</a></li>'
                                 for lk in links) + "</ul>")
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{esc(title)}</title></head>'
            f"<body>{''.join(body)}</body></html>")
