"""Settings, one class per concern, each with its own environment prefix (pattern of tipg).

``DATABASE_URL`` (or ``CITYGRID_DB_URL``) points at an external PostgreSQL + PostGIS; without it the
project runs its own cluster under ``var/`` (see :mod:`citygrid.dbcluster`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
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
    #: HTTP worker processes of ``citygrid serve|run`` (``--workers``); unset: the machine's cores, at
    #: most 8. Every in-process cache follows the database (docs/SCALING.md), so any number is correct.
    workers: int | None = Field(None, ge=1, le=256)
    #: Answer with ``X-Citygrid-Worker: <pid>`` (tests and load checks of several workers; off in service).
    worker_header: bool = False
    # The base maps of the pages: BasemapSettings (CITYGRID_BASEMAP_…; CITYGRID_API_BASEMAP_URL still read).
    #: Reverse proxies in front of the service that append the client's address to X-Forwarded-For
    #: (0: none, the socket's address is the client's; 1: the last address of the header, …). Set it
    #: only when the service cannot be reached except through them: the header is the client's to forge.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)

    # -- limits (api/limits.py) ----------------------------------------------------------------------
    #: Largest request body, bytes, of a route without an override below (JSON, forms): 413 before the
    #: body is read when Content-Length says more, or as soon as a streamed body passes it.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    #: Largest body of ``POST /api/v1/snap`` (a list of up to ``max_snap_points`` points).
    max_snap_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Largest body of a citizen's submission (``POST /api/v1/public/requests``: one photo + the form).
    max_submit_bytes: int = Field(11 * 1024 * 1024, ge=1024)
    #: Rate limits per client address (``limits`` notation: "N per second|minute|hour|day", several
    #: separated by ";"); answered 429 with Retry-After. Anonymous submissions, look-ups (status, rate)
    #: and anonymous exports (downloads and export jobs).
    rate_limit_submit: str = "30/minute;300/hour"
    rate_limit_lookup: str = "60/minute;600/hour"
    rate_limit_export: str = "30/minute;300/hour"
    #: Where the counters live (a ``limits`` storage URI). ``database://`` (default): the app's own
    #: PostgreSQL (``api.limits.DatabaseStorage``, UNLOGGED tables), shared by every worker process and
    #: host; ``redis://host:6379`` (or memcached) does the same off the database; ``memory://`` counts
    #: in each process (with N workers a client may make N times the limit).
    rate_limit_storage: str = "database://"
    #: Worker processes that run case imports (``api/offload.py``: an import in a thread would stop the
    #: event loop for the interpreter lock); more imports at a time wait for one.
    import_processes: int = Field(1, ge=1, le=16)
    #: Seconds a client is told to wait (Retry-After) while the database cannot be reached (503).
    db_retry_after_s: int = Field(5, ge=1, le=3600)


class GridSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_GRID_")

    cell_size: float = 100.0
    #: Override the working CRS (EPSG code); default: the CGCS2000 3-degree Gauss-Krüger zone.
    working_epsg: int | None = None


class ExportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYGRID_EXPORT_")

    #: Hours a finished background export (and its file under ``<data_dir>/exports``) is kept.
    job_ttl_hours: float = 24.0
    #: Export jobs running at once for one city, and for one client (a user, or an anonymous caller's
    #: address); a job over either cap is refused (429).
    max_jobs_per_city: int = Field(4, ge=1, le=64)
    max_jobs_per_client: int = Field(2, ge=1, le=64)
    #: Jobs running at once in all (every city, every process): the size of the jobs' own pool.
    max_jobs_total: int = Field(8, ge=1, le=64)


class WorklistSettings(BaseSettings):
    """The inspector worklist's hot-spot weight."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_WORKLIST_")

    #: Days of cases (ending today) whose hot-spot z weights the worklist's cases.
    hotspot_days: int = Field(30, ge=1, le=366)
    #: Analysis unit of the worklist's hot spots in metres (a multiple of the cell); unset: chosen from
    #: the data as on the supervisors' map (gis.exact_hotspots). The test is exact at any unit; a small
    #: unit on sparse data finds only strong, compact clusters.
    hotspot_unit_m: float | None = Field(None, gt=0, le=10_000)
    #: New cases make the cached weights stale; they are recomputed at most once per this many minutes
    #: (0: on every change). A new day, a new grid or a rollup rebuild recompute at once.
    hotspot_refresh_minutes: float = Field(10.0, ge=0)


class CaseListSettings(BaseSettings):
    """The staff case lists (``layers.cases.workflow.list_cases``) and the case tables' upkeep."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_CASES_")

    #: A list's total is counted exactly up to this many cases; past it the answer says
    #: ``total_exact: false`` and ``total`` is the planner's estimate (a first page must not count the
    #: whole history of a province).
    list_count_cap: int = Field(10_000, ge=1, le=10_000_000)
    #: The service makes the case tables' monthly partitions (this month and three ahead, and the month
    #: of any row waiting in a default partition) at start and then every this many hours.
    partition_upkeep_hours: float = Field(6.0, gt=0, le=24 * 31)


class AuthSettings(BaseSettings):
    """Bearer tokens, sign-in (passwords, sessions, lockout) and the server's secret key."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_AUTH_")

    #: Days a new bearer token is valid when ``--expires-in`` (or the API's ``expires_in_days``) is not given.
    token_days: int = Field(90, ge=1, le=3650)
    #: The server's secret key (HMAC of the citizens' query codes). Never stored in the database: a
    #: copy of the database alone must not suffice to try query codes. Unset: a key generated on first
    #: use in ``<var_dir>/secret_key`` (mode 0600), which must then be kept (and backed up) with the
    #: service: without it no query code issued so far can be checked.
    secret_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("CITYGRID_SECRET_KEY"))

    # -- sign-in (api/routers/auth.py, layers/core/sessions.py) ----------------------------------------
    #: Hours a browser session lasts at most from sign-in, and minutes it survives without a request.
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    session_idle_minutes: float = Field(120.0, gt=0, le=24 * 60 * 30)
    #: Failed sign-ins allowed per user name, and per client address, within the window; one more is
    #: answered 429 with Retry-After (a correct password too) until the oldest failure leaves the window.
    login_max_failures_per_name: int = Field(5, ge=1, le=1000)
    login_max_failures_per_address: int = Field(20, ge=1, le=10_000)
    login_window_minutes: float = Field(15.0, gt=0, le=24 * 60)
    #: Shortest password accepted when one is set.
    password_min_length: int = Field(10, ge=6, le=128)
    #: The session cookie's name.
    session_cookie: str = Field("cg_session", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    #: OpenID Connect sign-in (a government SSO), off unless an issuer is set: the provider's issuer URL
    #: (its /.well-known/openid-configuration is read), this service's client id and secret there, the
    #: claim naming the user (matched to an existing user's name; nobody is created by a sign-in), and
    #: the button's label on /login.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_user_claim: str = "preferred_username"
    oidc_label: str = "统一身份认证登录 Government SSO"
    #: The password of every demo user (``citygrid demo`` / ``make run``); unset: one made at random per
    #: install, kept in ``<var_dir>/demo_tokens.json`` and printed by ``citygrid run``.
    demo_password: SecretStr | None = Field(None, min_length=10)


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


def case_list() -> CaseListSettings:
    """Read each time (not cached), as the export settings."""
    return CaseListSettings()


@lru_cache
def auth() -> AuthSettings:
    return AuthSettings()


class BasemapSettings(BaseSettings):
    """The base maps the pages offer (``api/routers/basemap.py`` lists them, ``static/common/map.js`` draws them).

    Without any of them the pages draw the reference map made of the city's own layers (districts,
    streets, communities and key zones with their names, the grid from zoom 15): offline, in tests, on
    an intranet. Each source below adds one entry to the layer switcher:

    * ``CITYGRID_BASEMAP_TIANDITU_KEY``: 天地图 (the national map service), vector + annotation (vec+cva)
      and image + annotation (img+cia), Web Mercator (``_w``) from t0–t7.tianditu.gov.cn, CGCS2000 ≈ WGS-84.
    * ``CITYGRID_BASEMAP_AMAP`` / ``CITYGRID_BASEMAP_TENCENT`` (true): AMap / Tencent road maps, in GCJ-02:
      the pages then shift the city's layers into GCJ-02 so that they lie on the right streets.
    * ``CITYGRID_BASEMAP_URL`` (or the older ``CITYGRID_API_BASEMAP_URL``): any XYZ template
      (``{z}/{x}/{y}``, ``{s}`` with ``CITYGRID_BASEMAP_SUBDOMAINS``, ``{-y}`` for TMS), its datum
      ``CITYGRID_BASEMAP_CRS`` (EPSG:4326 or GCJ-02), ``CITYGRID_BASEMAP_TITLE``, ``CITYGRID_BASEMAP_ATTRIBUTION``.
    * ``CITYGRID_BASEMAP_XYZ``: more templates, a JSON list of ``{"name", "title", "url", "attribution",
      "crs", "subdomains", "max_zoom"}``.
    * ``CITYGRID_BASEMAP_MBTILES``: offline raster tiles served by this service, a JSON object name →
      ``.mbtiles`` path (or one path: name ``offline``), at ``/api/v1/basemaps/{name}/{z}/{x}/{y}``.
    """

    model_config = SettingsConfigDict(env_prefix="CITYGRID_BASEMAP_")

    tianditu_key: SecretStr | None = Field(default=None, repr=False)
    amap: bool = False
    tencent: bool = False
    url: str | None = Field(default=None, validation_alias=AliasChoices("CITYGRID_BASEMAP_URL",
                                                                        "CITYGRID_API_BASEMAP_URL"))
    title: str = "底图 Base map"
    attribution: str = Field(default="", validation_alias=AliasChoices("CITYGRID_BASEMAP_ATTRIBUTION",
                                                                       "CITYGRID_API_BASEMAP_ATTRIBUTION"))
    crs: str = "EPSG:4326"
    subdomains: str = "abc"
    max_zoom: int = Field(18, ge=1, le=22)
    xyz: list[dict] = Field(default_factory=list)
    #: JSON object name → path, or a single path (its name: ``offline``).
    mbtiles: str | None = None
    #: The entry shown on opening (its name); default: the first configured source, else the reference map.
    default: str | None = None
    #: Offer the reference map of the city's own layers (always offered when nothing else is configured).
    reference: bool = True


def basemap() -> BasemapSettings:
    """Read each time (not cached): the tests and a reloaded service see changed sources."""
    return BasemapSettings()


class WechatSettings(BaseSettings):
    """The 12345 WeChat official account, per city. Nothing here is ever logged.

    ``CITYGRID_WECHAT_ACCOUNTS`` is a JSON object: city slug → ``{"app_id", "secret", "token",
    "aes_key" (the 43-character EncodingAESKey; empty: plain mode), "templates": {"accepted",
    "dispatched", "closed", "rate": template ids}, "page_url": the H5 page for the template links}``.
    A city without an entry has no account: its message server answers 404 and nothing is sent.
    """

    model_config = SettingsConfigDict(env_prefix="CITYGRID_WECHAT_")

    accounts: dict[str, dict] = Field(default_factory=dict, repr=False)
    #: Base URL of the WeChat API (``/cgi-bin/…``, ``/sns/…``); the tests point it at a local server.
    api_base: str = "https://api.weixin.qq.com/"
    #: The service's public address (``https://…``) for the sign-in's redirect_uri, whose domain is
    #: registered with WeChat; without it the address each request came to is used.
    public_base: str | None = None
    #: Where the H5 page sends a citizen to authorise (snsapi_base).
    oauth_base: str = "https://open.weixin.qq.com/connect/"
    #: Seconds a signed request's timestamp may be away from now (replay window).
    replay_window_s: int = Field(300, ge=10, le=3600)
    #: Minutes a report's draft in the chat is kept without a message.
    draft_minutes: int = Field(60, ge=1)
    #: Days a session of the H5 page (signed in by WeChat) lasts.
    session_days: int = Field(7, ge=1, le=90)
    #: Seconds of an HTTP call to the WeChat API.
    http_timeout_s: float = 5.0


class NotifySettings(BaseSettings):
    """Notifications to citizens (template messages, SMS) from the outbox. SMS is off unless
    ``CITYGRID_NOTIFY_SMS`` is set: a JSON object ``{"provider": "tencent", "endpoint",
    "secret_id", "secret_key", "sdk_app_id", "sign_name", "region", "templates": {"accepted", …}}``."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_NOTIFY_")

    sms: dict | None = Field(default=None, repr=False)
    #: Attempts of one message before it is marked failed; the n-th retry waits base·2^(n-1) s (≤ max).
    max_attempts: int = Field(8, ge=1, le=50)
    backoff_base_s: float = Field(30.0, ge=0)
    backoff_max_s: float = Field(3600.0, ge=0)
    #: Messages claimed per round; seconds between rounds of the worker.
    batch: int = Field(50, ge=1, le=1000)
    poll_s: float = Field(5.0, gt=0)
    #: Run the worker as a background task of the app (besides ``citygrid notify run``).
    in_app: bool = False


def wechat() -> WechatSettings:
    """Read each time (not cached): the tests and a reloaded service see changed accounts."""
    return WechatSettings()


def notify() -> NotifySettings:
    return NotifySettings()


class BackupSettings(BaseSettings):
    """Backups of the own cluster with pgBackRest (``citygrid db backup``, :mod:`citygrid.backup`)."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_BACKUP_")

    #: The pgBackRest repository (and the file stores' copies in ``<repo>/files``); default
    #: ``<var_dir>/backup``. The cluster's OS user must be able to write it.
    repo: Path | None = None
    #: Full backups kept (older ones, their differentials and their WAL are expired).
    retention_full: int = Field(2, ge=1, le=100)
    #: pgBackRest's compression (lz4: fast; gz, zst, bz2, none) and parallel processes.
    compress_type: str = "lz4"
    process_max: int = Field(2, ge=1, le=32)
    #: Seconds to wait for a WAL segment to reach the repository (pgbackrest archive-timeout).
    archive_timeout_s: int = Field(60, ge=1, le=3600)


def backup() -> BackupSettings:
    return BackupSettings()


class ReplicaSettings(BaseSettings):
    """The read replica: a streaming hot standby of the own cluster (``citygrid db replica``)."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_DB_")

    #: Where read-only heavy work goes (tiles, exports, OGC items, analytics, bulletins); unset: the
    #: primary. A user's own writes are still read from the primary until the replica has replayed them.
    read_url: str | None = None
    #: The own standby's port (its socket lives beside its data, ``<var_dir>/replica``).
    replica_port: int = 54339


def replica() -> ReplicaSettings:
    return ReplicaSettings()


class TextSettings(BaseSettings):
    """Chinese text of the cases (issue 15): classification on intake, places in the text, recurring
    problems, reply quality."""

    model_config = SettingsConfigDict(env_prefix="CITYGRID_TEXT_")

    #: The text model used on intake: ``citygrid text train --city X`` stores one named after the city
    #: (default); set a name to use another (e.g. one trained on a labelled file and mapped to the catalog).
    model: str | None = None
    #: Nothing is dispatched automatically below this probability of the model's first class (and only
    #: when that class is the one the case was recorded with); 1.0 turns automatic dispatch off.
    auto_dispatch_confidence: float = Field(0.9, ge=0.5, le=1.0)
    #: A place found in a text is proposed to the operator from this confidence on.
    place_min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    #: Recurring problems: cosine similarity of two cases' TF-IDF vectors to count as the same problem,
    #: and the window of days and the distance (m) within which they are the same period and place.
    recurring_similarity: float = Field(0.4, gt=0.0, lt=1.0)
    recurring_days: int = Field(30, ge=1, le=366)
    recurring_radius_m: float = Field(500.0, gt=0)
    #: A reply scoring below this (0–1, the mean of relevance, completeness, timeliness) is flagged.
    reply_weak_score: float = Field(0.5, ge=0.0, le=1.0)
    #: Working days within which a reply counts as timely (score 1), and from which it scores 0.
    reply_timely_days: float = Field(5.0, gt=0)
    reply_late_days: float = Field(20.0, gt=0)


def text() -> TextSettings:
    """Read each time (not cached): a changed threshold is seen at once."""
    return TextSettings()
