"""Settings, one class per concern, each with its own environment prefix (pattern of tipg).

``DATABASE_URL`` (or ``CITYGRID_DB_URL``) points at an external PostgreSQL + PostGIS; without it the
project runs its own cluster under ``var/`` (see :mod:`citygrid.dbcluster`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class PathSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_")

    var_dir: Path = PROJECT_ROOT / "var"
    #: ``../shared/data`` next to the checkout: real data made by others (read only).
    shared_data: Path = PROJECT_ROOT.parent / "shared" / "data"

    #: Files kept by the service (photos …); default ``<var_dir>/data``. Separate from ``var_dir``
    #: (which also holds the own database cluster) so that files can live elsewhere.
    data_dir_override: Path | None = Field(default=None, validation_alias=AliasChoices("CITYGRID_DATA_DIR"))

    @property
    def data_dir(self) -> Path:
        return self.data_dir_override or (self.var_dir / "data")


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_DB_")

    url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "CITYGRID_DB_URL"))
    #: The project's own cluster: database name, role, port (its Unix socket carries the number).
    name: str = "citygrid"
    user: str = "citygrid"
    port: int = 54329
    #: Where the own cluster keeps its files; default ``var/pg`` (or a place the cluster's OS user
    #: can enter, when the checkout is not reachable for it).
    pgdata: Path | None = None
    #: OS user that runs the own cluster when started as root (PostgreSQL refuses root).
    os_user: str = "postgres"
    #: pool_size + max_overflow must cover the server's worker threads (40 for FastAPI's sync
    #: endpoints): fewer connections than threads can stall every thread under load.
    pool_size: int = 10
    max_overflow: int = 35
    statement_timeout_ms: int = 120_000
    #: Connections of the asynchronous pool (asyncpg) behind the fast intake of reports.
    async_pool_min: int = 2
    async_pool_max: int = 10
    #: Batches of reports the intake writes at the same time (layers.field.intake.ReportWriter).
    intake_lanes: int = Field(2, ge=1, le=64)


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_API_")

    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest point list ``POST /api/v1/snap`` accepts.
    max_snap_points: int = 100_000
    #: Largest upload (boundary or grid files), bytes.
    max_upload_bytes: int = 50 * 1024 * 1024
    #: Largest bbox ``GET /api/v1/cells`` answers, in cells.
    max_cells_per_request: int = 20_000
    #: The city answered by default when a request names none.
    default_city: str = "haimen"
    #: XYZ tile URL of a base map for the pages (none: the city's own layers on a blank background).
    #: Tiles must be in WGS-84 Web Mercator (OSM-like); GCJ-02 tiles (AMap, Tencent) would misplace data.
    basemap_url: str | None = None
    basemap_attribution: str = ""
    #: Reverse proxies in front of the service that append the client's address to X-Forwarded-For
    #: (0: none, the socket's address is the client's; 1: the last address of the header, …). Set it
    #: only when the service cannot be reached except through them: the header is the client's to forge.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)


class GridSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_GRID_")

    cell_size: float = 100.0
    #: Override the working CRS (EPSG code); default: the CGCS2000 3-degree Gauss-Krüger zone.
    working_epsg: int | None = None


class ExportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_EXPORT_")

    #: Hours a finished background export (and its file under ``<data_dir>/exports``) is kept.
    job_ttl_hours: float = 24.0


class WorklistSettings(BaseSettings):
    """The inspector worklist's hot-spot weight."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_WORKLIST_")

    #: Days of cases (ending today) whose Gi* z weights the worklist's cases.
    hotspot_days: int = Field(30, ge=1, le=366)
    #: New cases make the cached weights stale; they are recomputed at most once per this many minutes
    #: (0: on every change). A new day, a new grid or a rollup rebuild recompute at once.
    hotspot_refresh_minutes: float = Field(10.0, ge=0)


@lru_cache
def paths() -> PathSettings:
    return PathSettings()


@lru_cache
def database() -> DatabaseSettings:
    return DatabaseSettings()


@lru_cache
def api() -> ApiSettings:
    return ApiSettings()


@lru_cache
def grid() -> GridSettings:
    return GridSettings()


def export() -> ExportSettings:
    """Read each time (not cached): the clean-up of old export jobs follows a changed setting."""
    return ExportSettings()


def worklist() -> WorklistSettings:
    """Read each time (not cached), as the export settings."""
    return WorklistSettings()
