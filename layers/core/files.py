"""Reading vector GIS files safely (GeoJSON, GeoPackage, Shapefile — zipped or not)."""

from __future__ import annotations

import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import pyogrio

from layers.core.errors import InputError

MAX_UNZIPPED = 500 * 1024 * 1024
MAX_ZIP_MEMBERS = 2000
VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".zip", ".kml", ".fgb"}


def _safe_extract(zip_path: Path, dest: Path) -> Path:
    """Extract a zip (zip-bomb and path-traversal guarded); return the dataset inside it."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise InputError(f"not a valid zip archive: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise InputError(f"zip archive has {len(infos)} members; at most {MAX_ZIP_MEMBERS} are accepted")
        total = sum(i.file_size for i in infos)
        if total > MAX_UNZIPPED:
            raise InputError(f"zip archive unpacks to {total} bytes; at most {MAX_UNZIPPED} are accepted")
        for info in infos:
            target = (dest / info.filename).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise InputError(f"zip member '{info.filename}' points outside the archive")
            if info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(info) as src, target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size or written > MAX_UNZIPPED:
                        raise InputError("zip member is larger than it declares (zip bomb?)")
                    out.write(chunk)
    for suffix in (".shp", ".gpkg", ".geojson", ".json", ".kml", ".fgb"):
        found = sorted(dest.rglob(f"*{suffix}"))
        if found:
            return found[0]
    raise InputError("the zip archive holds no .shp, .gpkg, .geojson, .kml or .fgb file")


@contextmanager
def opened(path: Path):
    """Yield a path GDAL can read (a zip is unpacked to a temporary folder)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="citygrid-") as tmp:
            yield _safe_extract(path, Path(tmp))
    else:
        yield path


def read_vector(path: Path, layer: str | None = None) -> tuple[gpd.GeoDataFrame, str | None]:
    """Read a vector file; return the frame and its CRS as 'EPSG:n' (None when the file has none)."""
    with opened(path) as p:
        try:
            df = pyogrio.read_dataframe(p, layer=layer)
        except Exception as e:  # pyogrio raises DataSourceError/DataLayerError and friends
            raise InputError(f"cannot read '{Path(path).name}' as a GIS file: {e}") from None
    crs = None
    if df.crs is not None:
        epsg = df.crs.to_epsg(min_confidence=70)
        crs = f"EPSG:{epsg}" if epsg else None
        if crs is None:
            raise InputError(f"the file's CRS has no EPSG code ({df.crs.name}): give the CRS explicitly")
    return df, crs
