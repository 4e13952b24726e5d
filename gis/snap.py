"""Point -> grid cell lookup, exact and vectorised.

Both indexes answer ``locate(x, y) -> int64 array`` (cell index, -1 outside the grid) for
points in the grid's projected working CRS. NaN or infinite coordinates give -1, and a point
outside every cell is -1: it is never snapped to a nearby cell.

Edge rule. Cells are half-open: a point on an edge or corner shared by several cells belongs
to the cell that contains the point displaced by an infinitesimal step towards the north-east,
(x + δ, y + 0.618·δ). The city's outer boundary is closed: a point on it belongs to the cell it
touches.

- RegularGridIndex: col = floor(x / size), row = floor(y / size), exact with respect to the
  edges col * size as computed in float64; a cell owns its west and south edges and its
  south-west corner. The point must then lie in that cell's (closed) clipped geometry. Where
  the outer boundary runs along a grid line on the north or east side, the rule sends points on
  it to a square that does not exist: they are outside.
- PolygonGridIndex: among the cells intersecting the point, the one containing the displaced
  point with δ = 1e-8 × the median cell width (1 µm for 100 m cells); if none or several do,
  the lowest index. On a regular grid this agrees with RegularGridIndex everywhere except on
  the outer boundary where it runs along a north or east grid line (kept here) or where an
  inner edge meets it.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["RegularGridIndex", "PolygonGridIndex"]

_CHUNK = 1 << 16  # points per block: keeps the temporaries in cache
_MAX_BUCKETS = 100_000_000
_OUTSIDE, _INSIDE, _MIXED = 0, 1, 2
_PHI = 0.6180339887498949  # north component of the tie-break step (an irrational slope)


def _points(x, y) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return x.ravel(), y.ravel(), x.shape


def _locate(lookup, resolve, x, y) -> np.ndarray:
    """Table lookup in cache-sized blocks, then exact resolution of the flagged points.

    lookup(x, y) returns cell indices, -1, or -2 - k for points needing the exact test k;
    resolve(k, x, y) answers those. Resolution runs on all flagged points at once, sorted by
    k, so that the geometries are visited in memory order.
    """
    x, y, shape = _points(x, y)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), _CHUNK):
        out[s : s + _CHUNK] = lookup(x[s : s + _CHUNK], y[s : s + _CHUNK])
    flagged = np.flatnonzero(out < -1)
    if len(flagged):
        key = -2 - out[flagged]
        order = np.argsort(key, kind="stable")
        flagged, key = flagged[order], key[order]
        out[flagged] = resolve(key, x[flagged], y[flagged])
    return out.reshape(shape)


def _floor_index(v: np.ndarray, step: float, origin: int, n: int) -> np.ndarray:
    """Column c with c*step <= v < (c+1)*step (products in float64, as the cells' squares are
    built), minus origin, plus 1, clamped to [0, n + 1]: 0 and n + 1 mean outside; NaN -> 0.

    floor(v / step) alone can be off by one next to an edge when step is not exactly
    representable (e.g. 0.3 or 33.3); the two corrections make it exact.
    """
    t = v / step
    np.floor(t, out=t)
    t -= t * step > v
    t += (t + 1.0) * step <= v
    t -= origin - 1
    np.fmax(t, 0.0, out=t)  # also NaN -> 0
    np.fmin(t, n + 1.0, out=t)
    return t.astype(np.intp)


class RegularGridIndex:
    """Exact point lookup in a regular grid whose boundary cells are clipped.

    A dense table maps (col, row) to the cell. Points in a partial (clipped) cell are checked
    against a k x k sub-raster of that cell, each sub-cell marked inside, outside or mixed
    (conservatively, with a tiny margin); only points in mixed sub-cells are tested against
    the clipped geometry with shapely.intersects_xy.
    """

    def __init__(self, cols, rows, size: float, geoms, partial, subdivisions: int = 8):
        cols = np.asarray(cols, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        geoms = np.asarray(geoms)
        partial = np.asarray(partial, dtype=bool)
        n = len(cols)
        if not (rows.shape == geoms.shape == partial.shape == (n,)):
            raise ValueError("cols, rows, geoms and partial must be 1-D arrays of equal length")
        if n == 0:
            raise ValueError("empty grid")
        if not (np.isfinite(size) and size > 0):
            raise ValueError(f"cell size must be a positive number, got {size}")
        self.size = float(size)
        self.cols, self.rows, self.geoms, self.partial = cols, rows, geoms, partial
        self._c0, self._r0 = int(cols.min()), int(rows.min())
        self._w = int(cols.max()) - self._c0 + 1
        self._h = int(rows.max()) - self._r0 + 1
        # Table with a one-cell border of -1: values >= 0 are full cells, -2 - slot partial ones.
        table = np.full((self._h + 2, self._w + 2), -1, dtype=np.int64)
        flat = (rows - self._r0 + 1) * (self._w + 2) + (cols - self._c0 + 1)
        if len(np.unique(flat)) != n:
            raise ValueError("duplicate (col, row) cells")
        self._partial_cells = np.flatnonzero(partial)
        values = np.arange(n, dtype=np.int64)
        values[self._partial_cells] = -2 - np.arange(len(self._partial_cells))
        table.ravel()[flat] = values
        self._table = table.ravel()
        self._k = int(subdivisions)
        if self._k < 1:
            raise ValueError("subdivisions must be >= 1")
        shapely.prepare(geoms[self._partial_cells])
        self._sub = self._sub_raster()

    @classmethod
    def from_cells(cls, cells, subdivisions: int = 8) -> RegularGridIndex:
        """Build from a gis.grid.RegularGridCells."""
        return cls(cells.cols, cells.rows, cells.size, cells.geoms, cells.partial, subdivisions)

    def __len__(self) -> int:
        return len(self.cols)

    def _sub_raster(self) -> np.ndarray:
        """States (n_partial, k, k) [row from south, col from west] of the partial cells."""
        k, s, idx = self._k, self.size, self._partial_cells
        eps = s * 1e-9  # covers rounding in the sub-cell arithmetic of locate
        j, i = np.divmod(np.arange(k * k), k)  # sub-row, sub-col
        x0 = (self.cols[idx, None] * s + i * (s / k)).ravel()
        y0 = (self.rows[idx, None] * s + j * (s / k)).ravel()
        cx, cy = np.repeat(self.cols[idx] * s, k * k), np.repeat(self.rows[idx] * s, k * k)
        boxes = shapely.box(
            np.maximum(x0 - eps, cx),
            np.maximum(y0 - eps, cy),
            np.minimum(x0 + s / k + eps, cx + s),
            np.minimum(y0 + s / k + eps, cy + s),
        )
        g = np.repeat(self.geoms[idx], k * k)
        state = np.full(len(boxes), _MIXED, dtype=np.uint8)
        state[shapely.covers(g, boxes)] = _INSIDE
        state[~shapely.intersects(g, boxes)] = _OUTSIDE
        return state.reshape(len(idx), k, k)

    def locate(self, x, y) -> np.ndarray:
        """Cell index of each point (-1 outside), same shape as the broadcast input."""
        return _locate(self._lookup, self._resolve_partial, x, y)

    def _lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ix = _floor_index(x, self.size, self._c0, self._w)
        iy = _floor_index(y, self.size, self._r0, self._h)
        iy *= self._w + 2
        iy += ix
        return self._table.take(iy)

    def _resolve_partial(self, slot: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        cell = self._partial_cells[slot]
        f = self._k / self.size
        si = np.clip(np.floor((x - self.cols[cell] * self.size) * f), 0, self._k - 1).astype(np.intp)
        sj = np.clip(np.floor((y - self.rows[cell] * self.size) * f), 0, self._k - 1).astype(np.intp)
        state = self._sub[slot, sj, si]
        res = np.where(state == _INSIDE, cell, -1)
        mixed = np.flatnonzero(state == _MIXED)
        if len(mixed):
            ok = shapely.intersects_xy(self.geoms[cell[mixed]], x[mixed], y[mixed])
            res[mixed] = np.where(ok, cell[mixed], -1)
        return res


class PolygonGridIndex:
    """Exact point lookup in an irregular grid of arbitrary (Multi)Polygons.

    A bucket raster (bucket = half the median cell width unless given; origin shifted so that
    bucket edges do not line up with grid lines) stores, per bucket, the cell when it is the
    only one to intersect the bucket and covers it (answered directly), -1 when no cell
    intersects it, or else a CSR list of the intersecting cells, tested with
    shapely.intersects_xy on prepared geometries. Cells may overlap or leave gaps.
    """

    def __init__(self, geoms, bucket_size: float | None = None):
        geoms = np.asarray(geoms)
        if geoms.ndim != 1 or len(geoms) == 0:
            raise ValueError("geoms must be a non-empty 1-D array of polygons")
        types = shapely.get_type_id(geoms)
        if not np.all(np.isin(types, (3, 6)) | shapely.is_empty(geoms)):
            raise ValueError("geoms must be Polygons or MultiPolygons")
        self.geoms = geoms
        shapely.prepare(geoms)
        bounds = shapely.bounds(geoms)
        nonempty = ~shapely.is_empty(geoms)
        if not nonempty.any():
            raise ValueError("all geometries are empty")
        width = float(np.median(bounds[nonempty, 2] - bounds[nonempty, 0]))
        b = float(bucket_size) if bucket_size is not None else width / 2.0
        if not b > 0:
            raise ValueError("bucket size must be positive")
        self.bucket_size = b
        self._delta = width * 1e-8
        minx, miny = bounds[nonempty, 0].min(), bounds[nonempty, 1].min()
        self._x0 = minx - 0.381966 * b
        self._y0 = miny - 0.381966 * b
        self._nx = int(np.floor((bounds[nonempty, 2].max() - self._x0) / b)) + 1
        self._ny = int(np.floor((bounds[nonempty, 3].max() - self._y0) / b)) + 1
        if (self._nx + 2) * (self._ny + 2) > _MAX_BUCKETS:
            raise ValueError(f"{self._nx} x {self._ny} buckets: bucket size {b} is too small for the extent")
        self._build(np.flatnonzero(nonempty), bounds[nonempty])

    def __len__(self) -> int:
        return len(self.geoms)

    def _bucket(self, v: np.ndarray, origin: float, n: int) -> np.ndarray:
        """floor((v - origin) / bucket) + 1 clamped to [0, n + 1]; NaN -> 0."""
        t = v - origin
        t /= self.bucket_size
        t += 1.0
        np.fmax(t, 0.0, out=t)
        np.fmin(t, n + 1.0, out=t)
        return t.astype(np.intp)  # truncation == floor on non-negative values

    def _build(self, cells: np.ndarray, bounds: np.ndarray) -> None:
        b, nx, ny = self.bucket_size, self._nx, self._ny
        bx0 = self._bucket(bounds[:, 0], self._x0, nx)
        by0 = self._bucket(bounds[:, 1], self._y0, ny)
        cx = self._bucket(bounds[:, 2], self._x0, nx) - bx0 + 1
        cy = self._bucket(bounds[:, 3], self._y0, ny) - by0 + 1
        # All (cell, bucket) pairs of the cells' bounding boxes.
        counts = cx * cy
        rep = np.repeat(np.arange(len(cells)), counts)
        off = np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts)
        dy, dx = np.divmod(off, cx[rep])
        bx, by = bx0[rep] + dx, by0[rep] + dy
        cell = cells[rep]
        buckets, pair_bucket = np.unique(by * (nx + 2) + bx, return_inverse=True)
        # Bucket (bx, by) covers [x0 + (bx - 1) b, x0 + bx b) x [...]; test against it plus a
        # margin that absorbs the rounding of _bucket, so "covers" holds for every point mapped
        # to it and "does not intersect" for every point mapped elsewhere.
        eps = b * 1e-6
        uby, ubx = np.divmod(buckets, nx + 2)
        left, bottom = self._x0 + (ubx - 1) * b, self._y0 + (uby - 1) * b
        boxes = shapely.box(left - eps, bottom - eps, left + b + eps, bottom + b + eps)
        inter = shapely.intersects(self.geoms[cell], boxes[pair_bucket])
        cell, pair_bucket = cell[inter], pair_bucket[inter]

        order = np.lexsort((cell, pair_bucket))  # bucket-major, cell index ascending
        cell, pair_bucket = cell[order], pair_bucket[order]
        ub, start, n_in = np.unique(pair_bucket, return_index=True, return_counts=True)
        table = np.full((ny + 2) * (nx + 2), -1, dtype=np.int64)
        single = np.flatnonzero(n_in == 1)
        covered = np.zeros(len(ub), dtype=bool)
        covered[single] = shapely.covers(self.geoms[cell[start[single]]], boxes[ub[single]])
        table[buckets[ub[covered]]] = cell[start[covered]]
        # CSR lists for the other buckets.
        csr = np.flatnonzero(~covered)
        table[buckets[ub[csr]]] = -2 - np.arange(len(csr))
        lens = n_in[csr]
        self._indptr = np.concatenate([[0], np.cumsum(lens)])
        take = np.repeat(start[csr], lens) + (np.arange(lens.sum()) - np.repeat(self._indptr[:-1], lens))
        self._indices = cell[take]
        self._table = table

    def locate(self, x, y) -> np.ndarray:
        """Cell index of each point (-1 outside), same shape as the broadcast input."""
        return _locate(self._lookup, self._resolve, x, y)

    def _lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ix = self._bucket(x, self._x0, self._nx)
        iy = self._bucket(y, self._y0, self._ny)
        iy *= self._nx + 2
        iy += ix
        return self._table.take(iy)

    def _resolve(self, bucket: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Exact test of points against their buckets' candidate cells, with the edge rule."""
        start = self._indptr[bucket]
        lens = self._indptr[bucket + 1] - start
        pt = np.repeat(np.arange(len(bucket)), lens)
        cand = self._indices[np.repeat(start - np.cumsum(lens) + lens, lens) + np.arange(len(pt))]
        ok = shapely.intersects_xy(self.geoms[cand], x[pt], y[pt])
        pt, cand = pt[ok], cand[ok]
        res = np.full(len(bucket), -1, dtype=np.int64)
        res[pt] = cand  # right wherever a single cell intersects the point
        n_hits = np.bincount(pt, minlength=len(bucket))
        tie = n_hits[pt] > 1
        if tie.any():
            pt, cand = pt[tie], cand[tie]
            d = self._delta
            inside = shapely.intersects_xy(self.geoms[cand], x[pt] + d, y[pt] + _PHI * d)
            # Prefer cells containing the displaced point, then the lowest index.
            order = np.lexsort((cand, ~inside, pt))
            pt, cand = pt[order], cand[order]
            first = np.ones(len(pt), dtype=bool)
            first[1:] = pt[1:] != pt[:-1]
            res[pt[first]] = cand[first]
        return res
