"""The base maps of the pages, from :class:`citygrid.settings.BasemapSettings`.

``sources()`` is what ``GET /api/v1/basemaps`` answers and ``static/common/map.js`` draws: each entry a
name, a title (zh-CN first), its datum (``EPSG:4326`` — Web Mercator tiles of WGS-84 or CGCS2000, the
same at map scale — or ``GCJ-02``, whose tiles the pages meet by shifting the city's layers), and its tile
layers (XYZ templates for Leaflet). A key (天地图) appears only inside the tile URLs that need it.
``tile_hosts()`` are the exact origins of those templates, the CSP's ``img-src`` (api/headers.py).

``MBTiles`` files are served by this service: ``read_tile`` reads one tile (TMS rows flipped to XYZ).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from citygrid import settings

GCJ02 = "GCJ-02"
WGS84 = "EPSG:4326"

TIANDITU = ("https://t{s}.tianditu.gov.cn/{layer}_w/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER={layer}"
            "&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles&TILEMATRIX={{z}}&TILEROW={{y}}&TILECOL={{x}}&tk={key}")
TIANDITU_ATTRIBUTION = "天地图 © 国家地理信息公共服务平台"
AMAP = "https://webrd0{s}.is.autonavi.com/appmaptile?lang=zh_cn&size=1&scale=1&style=8&x={x}&y={y}&z={z}"
TENCENT = "https://rt{s}.map.gtimg.com/tile?z={z}&x={x}&y={-y}&styleid=1000&scene=0&version=347"

#: The reference map drawn from the city's own layers (no tiles from elsewhere).
REFERENCE = {"name": "reference", "title": "参考图（本市区划与网格） Reference map", "kind": "reference",
             "crs": WGS84, "attribution": "citygrid 区划、网格 · city layers", "layers": []}

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
         "pbf": "application/vnd.mapbox-vector-tile"}


def _parse_crs(value: str | None) -> str:
    v = (value or WGS84).strip().upper().replace("_", "-")
    if v in ("GCJ-02", "GCJ02", "GCJ"):
        return GCJ02
    if v in ("EPSG:4326", "WGS84", "WGS-84", "EPSG:4490", "CGCS2000", "EPSG:3857"):
        return WGS84
    raise ValueError(f"base map datum {value!r}: EPSG:4326 (WGS-84/CGCS2000) or GCJ-02")


def _layer(url: str, subdomains: str = "", max_zoom: int = 18) -> dict:
    return {"url": url, "subdomains": subdomains, "max_zoom": max_zoom}


def mbtiles_files(cfg: settings.BasemapSettings | None = None) -> dict[str, Path]:
    """name → path of the configured MBTiles files."""
    cfg = cfg or settings.basemap()
    raw = (cfg.mbtiles or "").strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        return {str(k): Path(v) for k, v in json.loads(raw).items()}
    return {"offline": Path(raw)}


def sources(cfg: settings.BasemapSettings | None = None) -> list[dict]:
    """The configured base maps, the one shown on opening first."""
    cfg = cfg or settings.basemap()
    out: list[dict] = []
    if cfg.tianditu_key is not None and cfg.tianditu_key.get_secret_value().strip():
        key = cfg.tianditu_key.get_secret_value().strip()
        for name, base, note, title in (("tianditu_vec", "vec", "cva", "天地图 矢量 Tianditu map"),
                                        ("tianditu_img", "img", "cia", "天地图 影像 Tianditu imagery")):
            out.append({"name": name, "title": title, "kind": "xyz", "crs": WGS84,
                        "attribution": TIANDITU_ATTRIBUTION,
                        "layers": [_layer(TIANDITU.format(layer=lay, key=key, s="{s}"), "01234567", 18)
                                   for lay in (base, note)]})
    if cfg.amap:
        out.append({"name": "amap", "title": "高德地图 AMap", "kind": "xyz", "crs": GCJ02,
                    "attribution": "© 高德地图 AutoNavi", "layers": [_layer(AMAP, "1234", 18)]})
    if cfg.tencent:
        out.append({"name": "tencent", "title": "腾讯地图 Tencent map", "kind": "xyz", "crs": GCJ02,
                    "attribution": "© 腾讯地图 Tencent", "layers": [_layer(TENCENT, "0123", 18)]})
    if cfg.url:
        out.append({"name": "xyz", "title": cfg.title, "kind": "xyz", "crs": _parse_crs(cfg.crs),
                    "attribution": cfg.attribution, "layers": [_layer(cfg.url, cfg.subdomains, cfg.max_zoom)]})
    for i, x in enumerate(cfg.xyz):
        if not x.get("url"):
            raise ValueError(f"CITYGRID_BASEMAP_XYZ[{i}] has no url")
        out.append({"name": str(x.get("name") or f"xyz{i + 1}"), "title": str(x.get("title") or f"底图 {i + 1}"),
                    "kind": "xyz", "crs": _parse_crs(x.get("crs")), "attribution": str(x.get("attribution") or ""),
                    "layers": [_layer(str(x["url"]), str(x.get("subdomains") or "abc"), int(x.get("max_zoom") or 18))]})
    for name, path in mbtiles_files(cfg).items():
        meta = mbtiles_metadata(path)
        out.append({"name": name, "title": meta.get("name") or f"离线底图 Offline map ({name})", "kind": "mbtiles",
                    "crs": _parse_crs(meta.get("crs")) if meta.get("crs") else WGS84,
                    "attribution": meta.get("attribution", ""),
                    "layers": [_layer(f"/api/v1/basemaps/{name}/{{z}}/{{x}}/{{y}}", "",
                                      int(meta.get("maxzoom") or 18))]})
    if cfg.reference or not out:
        out.append(dict(REFERENCE))
    default = cfg.default or out[0]["name"]
    out.sort(key=lambda s: s["name"] != default)
    return out


def _hosts(url: str, subdomains: str) -> list[str]:
    if url.startswith("/"):
        return []
    subs = list(subdomains) if "{s}" in url else [""]
    out = []
    for s in subs:
        parts = urlsplit(url.replace("{s}", s))
        if parts.scheme in ("http", "https") and parts.netloc and "{" not in parts.netloc:
            out.append(f"{parts.scheme}://{parts.netloc}")
    return out


def tile_hosts(cfg: settings.BasemapSettings | None = None) -> list[str]:
    """The exact origins the configured tile templates load from (sorted, no duplicates)."""
    try:
        srcs = sources(cfg)
    except (ValueError, OSError):
        return []
    return sorted({h for s in srcs for lay in s["layers"] for h in _hosts(lay["url"], lay["subdomains"])})


# --- MBTiles ----------------------------------------------------------------------------------------

def _open(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)


def mbtiles_metadata(path: Path) -> dict[str, str]:
    """The ``metadata`` table of an MBTiles file ({} when it cannot be read)."""
    try:
        with _open(path) as db:
            return {str(k): str(v) for k, v in db.execute("SELECT name, value FROM metadata")}
    except sqlite3.Error:
        return {}


@dataclass
class Tile:
    data: bytes
    media: str


def _sniff(data: bytes, fmt: str | None) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return MEDIA["png"]
    if data[:3] == b"\xff\xd8\xff":
        return MEDIA["jpg"]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return MEDIA["webp"]
    return MEDIA.get((fmt or "").lower(), "application/octet-stream")


def read_tile(path: Path, z: int, x: int, y: int) -> Tile | None:
    """The tile at XYZ (z, x, y) of an MBTiles file (rows are TMS: flipped), or None when it has none."""
    with _open(path) as db:
        row = db.execute("SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                         (z, x, (1 << z) - 1 - y)).fetchone()
        if row is None or row[0] is None:
            return None
        fmt = db.execute("SELECT value FROM metadata WHERE name = 'format'").fetchone()
    data = bytes(row[0])
    return Tile(data, _sniff(data, fmt[0] if fmt else None))
