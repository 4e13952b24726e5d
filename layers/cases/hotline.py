"""Hotline intake in bulk: CSV / XLSX / JSON with Chinese or English headers (UTF-8 or GBK), a
column-mapping file, a progress bar, a row-level error report, idempotent on the source case number.

Set-based end to end: the file is parsed into columns (pandas), times, classes and channels are
mapped as whole columns, points are transformed and snapped with the in-process grid index, deadlines
come from the vectorised calendar, and cases, their 'received' events and contacts are written with
COPY — never one INSERT per row. Every row is checked before anything is written; the write then
runs in rounds of 10,000 cases, pipelined: a thread COPYs round k (cases, events, contacts; the
rollup trigger fires once per statement) while round k+1 is built, all in the caller's transaction.
Each row is either written whole (case + events + contact) or rejected with its reason; a failure
while writing fails the import, and the caller's rollback leaves nothing of the file. Rows already
imported (same source case number) are skipped. Personal data (names, phones) is never put into the
report, the log or an error message.

Default or sentinel points (one exact point shared by many rows that name different addresses, like
Boston's "City Hall" 42.3594, -71.0587) are detected and treated as unknown locations; the address
is then matched against the gazetteer, and what stays unlocated waits in the "needs location" queue.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.cases import calendar as lcal
from layers.cases import workflow as wf
from layers.cases.vocab import CHANNELS, REQUEST_TYPES
from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import InputError

TIMING = False
MAPPINGS = Path(__file__).resolve().parent / "data" / "mappings"
FIELDS = ("source_ref", "received_at", "category", "channel", "request_type", "urgency", "title", "description",
          "address", "lon", "lat", "name", "phone", "status", "closed_at")
#: Header names recognised without a mapping file (compared lower-case, spaces stripped).
ALIASES = {
    "source_ref": ["工单编号", "工单号", "来源编号", "案卷号", "编号", "case_no", "source_ref", "id", "case_id", "srnumber",
                   "service_request_id"],
    "received_at": ["受理时间", "来电时间", "登记时间", "接收时间", "received_at", "created", "createddate", "open_dt",
                    "requested_datetime", "created_date"],
    "category": ["类别代码", "类别", "问题类别", "诉求分类", "category", "category_code", "requesttype", "type",
                 "service_code", "complaint_type"],
    "channel": ["渠道", "来源渠道", "来源", "channel", "requestsource", "source"],
    "request_type": ["诉求类型", "request_type"],
    "urgency": ["紧急程度", "urgency"],
    "title": ["标题", "title", "case_title"],
    "description": ["诉求内容", "问题描述", "描述", "内容", "description", "descriptor"],
    "address": ["地址", "事发地址", "address", "location", "incident_address"],
    "lon": ["经度", "lon", "lng", "longitude", "x"],
    "lat": ["纬度", "lat", "latitude", "y"],
    "name": ["姓名", "来电人", "联系人", "name", "caller_name"],
    "phone": ["电话", "联系电话", "来电号码", "phone", "caller_phone"],
    "status": ["状态", "status", "case_status"],
    "closed_at": ["办结时间", "结案时间", "closed_at", "closeddate", "closed_dt", "closed_date"],
}
#: Around a cell only this is removed: ASCII spaces, tabs and line ends. A full-width indent (　,
#: U+3000) opening a paragraph is part of the text and kept, as is everything inside a cell.
CELL_SPACE = " \t\r\n\f\v"
#: The longest text the API accepts (api/routers/cases.py); a longer cell is a row error, never cut.
TEXT_LIMITS = {"title": 200, "description": 5000, "address": 500, "name": 80, "phone": 40}
STATUS_VALUES = {"closed": "closed", "办结": "closed", "已办结": "closed", "结案": "closed", "void": "void",
                 "作废": "void", "open": "collected", "受理": "collected", "collected": "collected"}
URGENCY_VALUES = {"normal": "normal", "一般": "normal", "普通": "normal", "urgent": "urgent", "紧急": "urgent",
                  "emergency": "emergency", "特急": "emergency"}


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    skipped: int = 0  # imported before (same source case number)
    rejected: int = 0
    located: int = 0
    by_gazetteer: int = 0
    needs_location: int = 0
    sentinel_points: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # {"row", "source_ref", "reason"}; no personal data
    skipped_refs: list = field(default_factory=list)
    trimmed_cells: int = 0  # cells whose surrounding whitespace was removed (nothing else is changed)
    closed_before_received: int = 0  # kept, their closure dropped (not believed)
    deadline_unknown: int = 0  # kept, deadline flagged unknown: the calendar lacks a year it needs
    approximate_deadlines: int = 0  # before the first configured calendar year: weekends only
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # seconds per stage
    pipeline: dict = field(default_factory=dict)  # the write: rounds, build and COPY seconds (overlapped)
    dry_run: bool = False

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["accounted"] = self.imported + self.skipped + self.rejected == self.rows
        d["skipped_refs"] = self.skipped_refs[:1000]
        return d


# -- reading -------------------------------------------------------------------------------------

def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else GBK/GB18030 — the two encodings of Chinese office files."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as e:
        raise InputError(f"the file is neither UTF-8 nor GBK text (byte {e.start})") from None


def read_table(path: Path) -> pd.DataFrame:
    """The file as a frame of strings ('' for empty cells)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"no file {path}")
    if suffix in (".xlsx", ".xlsm"):
        import openpyxl

        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # noqa: BLE001 - openpyxl raises many kinds for a bad file
            raise InputError(f"not a readable XLSX workbook: {e}") from None
        ws = wb.worksheets[0]
        rows = list(ws.iter_rows(values_only=True))
        wb.close()
        if not rows:
            raise InputError("the workbook's first sheet is empty")
        header = [str(h).strip() if h is not None else f"column{i + 1}" for i, h in enumerate(rows[0])]

        def cell(v):
            if v is None:
                return ""
            if isinstance(v, dt.datetime):
                return v.isoformat(sep=" ")
            if isinstance(v, float) and v.is_integer():
                return str(int(v))
            return str(v)

        body = [[cell(v) for v in r] + [""] * (len(header) - len(r)) for r in rows[1:]]
        return pd.DataFrame([r[:len(header)] for r in body], columns=header, dtype=str)
    data = path.read_bytes()
    if suffix == ".json":
        try:
            obj = json.loads(decode(data))
        except json.JSONDecodeError as e:
            raise InputError(f"the JSON file is malformed: {e}") from None
        if isinstance(obj, dict):
            obj = obj.get("records") or obj.get("cases") or obj.get("data")
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise InputError("a JSON import must be a list of objects (or {\"records\": [...]})")
        df = pd.DataFrame(obj)
        return df.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) \
            if len(df) else df.astype(str)
    txt = decode(data)
    try:
        return pd.read_csv(io.StringIO(txt), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"the CSV file is malformed: {str(e).strip()}") from None


def load_mapping(mapping) -> dict:
    if mapping is None:
        return {}
    if isinstance(mapping, dict):
        return mapping
    p = Path(mapping)
    if not p.exists() and (MAPPINGS / f"{mapping}.json").exists():
        p = MAPPINGS / f"{mapping}.json"
    try:
        m = json.loads(decode(p.read_bytes()))
    except FileNotFoundError:
        raise InputError(f"no mapping file {mapping}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"the mapping file is malformed JSON: {e}") from None
    if not isinstance(m, dict):
        raise InputError("a mapping file is a JSON object with 'columns', 'values', 'defaults' …")
    unknown = set(m.get("columns", {})) - set(FIELDS)
    if unknown:
        raise InputError(f"the mapping names unknown fields {sorted(unknown)}; fields: {', '.join(FIELDS)}")
    return m


def resolve_columns(df: pd.DataFrame, mapping: dict) -> dict[str, str]:
    """field → the file's header for it."""
    headers = {str(h).strip().lower().replace(" ", ""): h for h in df.columns}
    cols: dict[str, str] = {}
    for f, h in (mapping.get("columns") or {}).items():
        key = str(h).strip().lower().replace(" ", "")
        if key not in headers:
            raise InputError(f"the mapping names column '{h}' for {f}, but the file has none; "
                             f"headers: {', '.join(map(str, df.columns[:40]))}")
        cols[f] = headers[key]
    for f, names in ALIASES.items():
        if f in cols:
            continue
        for n in names:
            if n.lower() in headers:
                cols[f] = headers[n.lower()]
                break
    defaults = mapping.get("defaults") or {}
    missing = [f for f in ("received_at", "category") if f not in cols and f not in defaults]
    if missing:
        raise InputError(f"the file has no column for {', '.join(missing)} (e.g. 受理时间 / received_at, "
                         f"类别 / category); headers: {', '.join(map(str, df.columns[:40]))}")
    return cols


def _parse_any_times(s: pd.Series) -> pd.Series:
    s = s.str.replace(r"(\d+)年(\d+)月(\d+)日", r"\1-\2-\3 ", regex=True)
    s = s.str.replace(r"(\d+)时(\d+)分(?:(\d+)秒)?", lambda m: f"{m[1]}:{m[2]}:{m[3] or '00'}", regex=True)
    s = s.str.replace(r"(\d+)时$", r"\1:00", regex=True)
    s = s.where(s != "", None)
    return pd.to_datetime(s, errors="coerce", format="mixed")


def _utc(out: pd.Series, tz: str) -> pd.Series:
    if out.dt.tz is None:
        out = out.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    return out.dt.tz_convert("UTC")


def parse_times(values: pd.Series, tz: str) -> pd.Series:
    """Many formats (ISO, 'YYYY/MM/DD HH:MM', US 'MM/DD/YYYY hh:mm:ss AM', 2020年1月1日 8时) → UTC.

    The common 'YYYY-MM-DD HH:MM:SS' is read in one pass; only the values it does not read go
    through the slow reader of every format (a value is read the same by both)."""
    s = values.astype(str).str.strip()  # a time is not text: any space around it goes
    out = pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    rest = (out.isna() & (s != "")).to_numpy()
    if rest.any():
        other = _parse_any_times(s[rest])
        if other.dt.tz is not None:  # zoned values: the whole column through the slow reader
            return _utc(_parse_any_times(s), tz)
        out = out.astype("datetime64[us]")
        out[rest] = other.astype("datetime64[us]").to_numpy()
    return _utc(out, tz)


def sentinel_points(x: np.ndarray, y: np.ndarray, addresses: np.ndarray, *, min_rows: int = 5,
                    min_share: float = 0.01, min_addresses: int = 3, known=()) -> set[tuple[float, float]]:
    """Exact points used as a default: shared by at least max(min_rows, min_share of the located
    rows) rows that name at least min_addresses different addresses.

    A real hot spot (38 encampment reports at one address among LA's 10,000 rows) names one address;
    a default point (Boston's City Hall: 19 of 100 rows) collects rows from all over the city.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    out = {(float(a), float(b)) for a, b in known}
    if not ok.any():
        return out
    df = pd.DataFrame({"x": x[ok], "y": y[ok], "a": pd.Series(addresses[ok]).str.strip().to_numpy()})
    counts = df.groupby(["x", "y"]).size()
    many = counts[counts >= max(min_rows, min_share * len(df))]
    if many.empty:
        return out
    cand = df.set_index(["x", "y"]).loc[many.index].reset_index()
    cand = cand[cand.a != ""].drop_duplicates()
    addrs = cand.groupby(["x", "y"]).size()
    hits = addrs[addrs >= min_addresses]
    out |= {(float(a), float(b)) for a, b in hits.index}
    return out


# -- the import ----------------------------------------------------------------------------------

def _per_value(values, fn) -> np.ndarray:
    """``fn`` applied once per distinct value of a column (an object array as long as the column):
    columns have 10^5 rows but a handful of distinct classes, channels or states."""
    codes, uniq = pd.factorize(pd.Series(np.asarray(values, dtype=object), dtype=object), use_na_sentinel=False)
    out = np.empty(len(uniq), dtype=object)
    for i, v in enumerate(uniq):
        out[i] = fn(v)
    return out[codes]


def _isin(values, allowed) -> np.ndarray:
    return pd.Series(np.asarray(values, dtype=object), dtype=object).isin(list(allowed)).to_numpy()


def _map_values(raw: pd.Series, table: dict, default=None) -> np.ndarray:
    """Map a column's values through a table (exact, then case-insensitive); unmapped keep their value."""
    lower = {str(k).strip().lower(): v for k, v in table.items()}
    s = raw.astype(str).str.strip(CELL_SPACE).to_numpy(dtype=object)
    fallback = table.get("*")
    out = _per_value(s, lambda v: table.get(v, lower.get(v.lower(), fallback if fallback is not None and v else v)))
    if default is not None:
        out = np.where(s != "", out, default).astype(object)
    return out


def _ts(seconds: np.ndarray) -> np.ndarray:
    """UNIX seconds → ISO-8601 UTC text ('' for NaN), vectorised."""
    seconds = np.asarray(seconds, dtype=np.float64)
    ok = np.isfinite(seconds)
    us = np.where(ok, np.round(seconds * 1e6), 0).astype("int64").astype("datetime64[us]")
    return np.where(ok, np.char.add(np.datetime_as_string(us, unit="us"), "Z"), "").astype(object)


def _nullable(values, present: np.ndarray) -> np.ndarray:
    """Python objects (int, float, str) where ``present``, None (NULL) elsewhere."""
    out = np.asarray(values).astype(object)
    out[~np.asarray(present, dtype=bool)] = None
    return out


def _csv(columns: list) -> bytes:
    """Rows given as columns, in PostgreSQL's CSV form: None and '' (unquoted) are NULL, and every
    field holding a comma, a quote, CR or LF is quoted (CRLF ends a row, so both are quoted)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(zip(*columns, strict=True))
    return buf.getvalue().encode()


#: Cases per round of the write: the rounds are pipelined (see :class:`_Pipeline`), so a round should
#: be small enough that the first one starts the server early, large enough that its COPY statements
#: (and the rollup trigger, once per statement) cost little each.
COPY_CHUNK = 10_000
FIRST_ROUND = 2_000
CASE_COLUMNS = ("id", "city_id", "case_no", "source", "channel", "source_ref", "received_at", "category_code",
                "category_name", "request_type", "urgency", "title", "description", "address", "location",
                "location_source", "location_confidence", "cell_id", "cell_code", "area_code", "state",
                "step_deadline_at", "close_deadline_at", "closed_at", "updated_at", "source_data")
EVENT_COLUMNS = ("case_id", "at", "kind", "actor_id", "actor_role", "from_state", "to_state", "data")
CONTACT_COLUMNS = ("case_id", "name", "phone")


class _Pipeline:
    """The COPY rounds, written by a thread of their own on the caller's connection (so in the caller's
    transaction): while the server inserts round k, the caller's thread builds round k+1. psycopg
    releases the GIL while it waits on the server, so the two overlap on two cores.

    The caller's thread must not use the connection between the first :meth:`put` and :meth:`close`.
    An error of the writer (a constraint the server enforces) is raised in the caller's thread, at the
    next :meth:`put` or at :meth:`close`; the transaction is then aborted, so nothing of the file stays.
    """

    def __init__(self, conn: Connection):
        self._raw = conn.connection.driver_connection
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._stop = False
        self.seconds: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="citygrid-import-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (job := self._queue.get()) is not None:
                if self._stop:
                    continue
                for table, columns, rows, payload in job:
                    t0 = time.perf_counter()
                    self._copy(table, columns, payload)
                    self.seconds[table] = self.seconds.get(table, 0.0) + time.perf_counter() - t0
                    self.rows[table] = self.rows.get(table, 0) + rows
        except BaseException as e:  # noqa: BLE001 - handed over to the caller's thread
            self._error = e
            while self._queue.get() is not None:  # keep put() from blocking on a full queue
                pass

    def _copy(self, table: str, columns, payload: bytes) -> None:
        import psycopg

        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)"
        try:
            with self._raw.cursor() as cur, cur.copy(sql) as cp:
                cp.write(payload)
        except psycopg.Error as e:
            if table != "case_contact":
                raise
            # The server's message quotes the failing line: names and phones stay out of errors and logs.
            diag = e.diag
            raise RuntimeError(f"writing the contacts failed: {diag.sqlstate or ''} {diag.message_primary or ''} "
                               f"{diag.message_detail or ''}".strip()) from None

    def put(self, job: list) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def close(self) -> None:
        """Wait until every round is written; raise what the writer met."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """The caller failed: send no further round, wait for the thread to end (the caller's error
        is the one to raise, the transaction is to be rolled back anyway)."""
        self._stop = True
        self._queue.put(None)
        self._thread.join()


#: The tables an import writes, each with the column naming its case (the rows of this import).
BULK_TABLES = {"case_file": "id", "case_event": "case_id", "case_contact": "case_id"}


def bulk_mode(conn: Connection) -> bool:
    """May this session write an import with its foreign keys checked per import, not per row?

    The per-row foreign-key triggers cost a third of an import's write (five SPI look-ups per case).
    A superuser may turn them off for its transaction (``session_replication_role = replica``, as
    ``pg_restore --disable-triggers`` does); :func:`check_foreign_keys` then checks the same keys,
    taking the same locks, in one statement per key. Replica mode skips every trigger enabled in
    origin mode only: the case tables' own triggers are ``ENABLE ALWAYS`` (migration 0022), and the
    bulk path is refused while any other user trigger on them is not (none is skipped silently)."""
    row = conn.execute(text("""
        SELECT current_setting('is_superuser') = 'on',
               (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O'
                  AND tgrelid = ANY(ARRAY['case_file', 'case_event', 'case_contact']::regclass[]))""")).one()
    return bool(row[0]) and row[1] == 0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_foreign_keys(conn: Connection, lo: int, hi: int) -> None:
    """Every foreign key of the rows an import wrote (the cases whose ids are ``lo``…``hi``, their
    events and contacts; rows of other sessions in that range are valid and checked again, harmless),
    checked in one statement per key, each referenced row locked ``FOR KEY SHARE`` as the
    per-row check would lock it (no concurrent delete of a grid cell or a user before commit).
    Raises (the import fails, the caller rolls back) when a key points at nothing."""
    fks = conn.execute(text("""
        SELECT c.conname, c.conrelid::regclass::text, cardinality(c.conkey), a.attname,
               c.confrelid::regclass::text, pa.attname
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
        WHERE c.contype = 'f' AND c.conparentid = 0
          AND c.conrelid = ANY(ARRAY['case_file', 'case_event', 'case_contact']::regclass[])
        ORDER BY 2, 1""")).all()
    for name, table, ncols, col, parent, pcol in fks:
        if ncols != 1:
            raise RuntimeError(f"foreign key {name} has {ncols} columns: the bulk check knows single columns only")
        # An event's or a contact's own case was written by this transaction: no other one can see it, let
        # alone delete it, so it needs no lock (locking 10^5 rows of our own would rewrite every page).
        # (Their keys reference case_key, the unpartitioned twin of case_file: migration 0025; a key on
        # a partitioned table is read on its parent, conparentid = 0, not on each partition's clone.)
        own = parent in ("case_file", "case_key") and col == BULK_TABLES[table]
        key, qcol, pcol = _ident(BULK_TABLES[table]), _ident(col), _ident(pcol)
        want, got = conn.execute(text(f"""
            WITH want AS (SELECT DISTINCT t.{qcol} AS k FROM {table} t
                          WHERE t.{key} BETWEEN :lo AND :hi AND t.{qcol} IS NOT NULL),
                 got AS (SELECT p.{pcol} FROM {parent} p WHERE p.{pcol} IN (SELECT k FROM want)
                         {'' if own else 'FOR KEY SHARE OF p'})
            SELECT (SELECT count(*) FROM want), (SELECT count(*) FROM got)"""), {"lo": lo, "hi": hi}).one()
        if want != got:
            raise RuntimeError(f"the import wrote {table} rows whose {col} is not in {parent} "
                               f"({want - got} of {want} values; foreign key {name})")


def import_cases(conn: Connection, city: CityInfo, path, *, mapping=None, actor=None, dry_run: bool = False,
                 progress: bool = True, source: str | None = None, max_errors: int = 100_000,
                 chunk: int | None = None, bulk: bool | None = None) -> ImportReport:
    """Import a file of cases into ``city``; returns the report (every row accounted for).

    ``chunk``: cases per pipelined write round (default :data:`COPY_CHUNK`). ``bulk``: foreign keys
    checked once per import, not per row (:func:`bulk_mode`; None: whenever the session may)."""
    t0 = time.perf_counter()
    m = load_mapping(mapping)
    src_kind = source or m.get("source", "hotline")
    if src_kind not in wf.SOURCES:
        raise InputError(f"unknown source '{src_kind}': one of {', '.join(wf.SOURCES)}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=4 if dry_run else 5, desc="import", unit="step", file=sys.stderr)

    last = [time.perf_counter()]

    def tick(what):
        now_ = time.perf_counter()
        rep_stages[what] = round(now_ - last[0], 3)
        last[0] = now_
        if bar is not None:
            bar.set_postfix_str(what)
            bar.update(1)

    rep_stages: dict = {}
    df = read_table(Path(path))
    n = len(df)
    rep = ImportReport(rows=n, dry_run=dry_run, stages=rep_stages)
    if n == 0:
        return rep
    cols = resolve_columns(df, m)
    defaults = m.get("defaults") or {}
    values = m.get("values") or {}
    columns: dict[str, pd.Series] = {}

    def col(f: str) -> pd.Series:
        if f not in columns:
            if f in cols:
                raw = df[cols[f]].astype(str)
                s = raw.str.strip(CELL_SPACE)
                rep.trimmed_cells += int((s.str.len() != raw.str.len()).sum())
                if f in defaults:
                    s = s.where(s != "", str(defaults[f]))
            else:
                s = pd.Series([str(defaults.get(f, ""))] * n, index=df.index)
            columns[f] = s
        return columns[f]

    def colv(f: str) -> np.ndarray:
        return col(f).to_numpy(dtype=object)

    reasons = np.full(n, None, dtype=object)

    def reject(mask, why, of=None):
        """The rows of ``mask`` without a reason yet get ``why``: a text, or a function of the row's
        value in ``of`` (called for those rows only)."""
        mask = np.asarray(mask, dtype=bool) & (reasons == None)  # noqa: E711 - object array
        if of is None:
            reasons[mask] = why
        else:
            for i in np.flatnonzero(mask):
                reasons[i] = why(of[i])

    tick("read")
    # Source case numbers: idempotency within the file and against the database.
    refs = colv("source_ref")
    has_ref = refs != ""
    dup_in_file = pd.Series(refs).where(has_ref).duplicated(keep="first").to_numpy() & has_ref
    reject(dup_in_file, "duplicate source case number in the file")
    existing = set()
    if has_ref.any():
        existing = {r[0] for r in conn.execute(text(
            "SELECT source_ref FROM case_key WHERE city_id = :c AND source = :s AND source_ref = ANY(:refs)"),
            {"c": city.id, "s": src_kind, "refs": list({str(r)[:80] for r in refs[has_ref]})})}
    skipped = (_isin(refs, existing) if existing else np.zeros(n, dtype=bool)) & (reasons == None)  # noqa: E711
    too_long = col("source_ref").str.len().to_numpy() > 80
    reject(too_long, "source case number longer than 80 characters")

    # Times.
    tz = m.get("timezone") or lcal.calendar().timezone
    raw_t = colv("received_at")
    recv = parse_times(col("received_at"), tz)
    bad_t = recv.isna().to_numpy()
    reject(bad_t & (raw_t == ""), "no received time")
    reject(bad_t, lambda v: f"impossible or unreadable received time '{v[:40]}'", raw_t)
    now = lcal.now()
    future = (recv > pd.Timestamp(now) + pd.Timedelta(days=1)).fillna(False).to_numpy()
    reject(future, "received time is in the future")

    # Classes, channels, request types, urgency, status.
    cats = _map_values(col("category"), values.get("category", {}))
    catalog = wf.catalog()
    reject(~_isin(cats, catalog), lambda v: f"unknown category '{v[:60]}'", cats)
    chan = _map_values(col("channel"), values.get("channel", {}), default=defaults.get("channel", "其他"))
    reject(~_isin(chan, CHANNELS), lambda v: f"unknown channel '{v[:40]}' (one of {', '.join(CHANNELS)})", chan)
    rtype = _map_values(col("request_type"), values.get("request_type", {}))
    reject((rtype != "") & ~_isin(rtype, REQUEST_TYPES), lambda v: f"unknown request type '{v[:20]}'", rtype)
    urg = _map_values(col("urgency"), {**URGENCY_VALUES, **values.get("urgency", {})}, default="normal")
    reject(~_isin(urg, wf.URGENCIES), lambda v: f"unknown urgency '{v[:20]}'", urg)
    # A class urgent by nature raises the urgency.
    cls_urg = _per_value(cats, lambda c: catalog.get(c, {}).get("urgency") or "normal")
    rank = {u: i for i, u in enumerate(wf.URGENCIES)}
    raise_urg = (_per_value(cls_urg, lambda u: rank.get(u, 0)).astype(np.int64)
                 > _per_value(urg, lambda u: rank.get(u, 0)).astype(np.int64))
    urg = np.where(raise_urg, cls_urg, urg).astype(object)
    state = _map_values(col("status"), {**STATUS_VALUES, **values.get("status", {})}, default="collected")
    reject(~_isin(state, ["collected", "closed", "void"]), lambda v: f"unknown status '{v[:30]}'", colv("status"))
    closed_raw = colv("closed_at")
    closed = parse_times(col("closed_at"), tz) if "closed_at" in cols else pd.Series(pd.NaT, index=df.index,
                                                                                    dtype="datetime64[ns, UTC]")
    is_closed = state == "closed"
    bad_closed = is_closed & closed.isna().to_numpy() & (closed_raw != "")
    reject(bad_closed, lambda v: f"impossible or unreadable closed time '{v[:40]}'", closed_raw)
    before = is_closed & (closed < recv).fillna(False).to_numpy()
    for f, cap in TEXT_LIMITS.items():
        if f in cols:
            reject(col(f).str.len().to_numpy() > cap, f"{f} is longer than {cap} characters (the API's limit)")
    # Closed before it was received: the case is kept, the closure is not believed (one rule with
    # `citygrid la311`); the source's status and the dropped closure stay in source_data.
    rep.closed_before_received = int((before & (reasons == None)).sum())  # noqa: E711
    state = np.where(before, "collected", state).astype(object)
    is_closed = state == "closed"
    # The source's own words: its category label and raw status, as given.
    src_cat = colv("category") if "category" in cols else None
    src_status = colv("status") if "status" in cols else None
    tick("validate")

    # Locations: parse, drop sentinel points, transform, snap; else the gazetteer; else the queue.
    lon = pd.to_numeric(col("lon"), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    lat = pd.to_numeric(col("lat"), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    given = (colv("lon") != "") | (colv("lat") != "")
    unreadable = given & ~(np.isfinite(lon) & np.isfinite(lat))
    reject(unreadable, "coordinates are not numbers")
    zero = (lon == 0) & (lat == 0)
    lon[zero | unreadable] = np.nan
    lat[zero | unreadable] = np.nan
    addr = colv("address")
    sp = sentinel_points(lon, lat, addr.astype(str), known=[(p[1], p[0]) for p in m.get("sentinel_points", [])])
    if sp:
        hit = np.zeros(n, dtype=bool)
        for a, b in sorted(sp):
            h = (lon == a) & (lat == b)
            if h.any():
                rep.sentinel_points.append({"lon": a, "lat": b, "rows": int(h.sum())})
            hit |= h
        lon[hit] = np.nan
        lat[hit] = np.nan
    has_pt = np.isfinite(lon) & np.isfinite(lat)
    srccrs = gcrs.parse_crs(m.get("crs", "EPSG:4326"))
    wx = np.full(n, np.nan)
    wy = np.full(n, np.nan)
    if has_pt.any():
        if gcrs.is_geographic(srccrs) or srccrs in (gcrs.GCJ02, gcrs.BD09):
            bad = gcrs.validate_lonlat(lon, lat)
            if bad is not None:
                badm = has_pt & (bad != None)  # noqa: E711
                reject(badm, lambda b: f"invalid lon/lat: {b}", bad)
                has_pt &= ~badm
        wx[has_pt], wy[has_pt] = gcrs.transform_xy(lon[has_pt], lat[has_pt], srccrs, city.working_crs)
    grid = lgrid.snapper(conn, city)
    idx = np.full(n, -1, dtype=np.int64)
    if has_pt.any():
        idx[has_pt] = grid.locate(wx[has_pt], wy[has_pt])
    reject(has_pt & (idx < 0), "the location is outside the city")
    loc_src = np.where(has_pt, "import", None).astype(object)
    conf = np.full(n, np.nan)
    need_geo = ~has_pt & (reasons == None) & (addr != "")  # noqa: E711
    if need_geo.any():
        from layers.cases import gazetteer

        gi = gazetteer.index(conn, city)
        for i in np.flatnonzero(need_geo):
            p = gi.match(addr[i])
            if p is not None and p.confidence >= gazetteer.MIN_CONFIDENCE:
                j = int(grid.locate(np.array([p.x]), np.array([p.y]))[0])
                if j >= 0:
                    wx[i], wy[i], idx[i] = p.x, p.y, j
                    loc_src[i], conf[i] = "gazetteer", p.confidence
                    rep.by_gazetteer += 1
    tick("locate")

    ok = (reasons == None) & ~skipped  # noqa: E711
    rep.skipped = int(skipped.sum())
    rep.skipped_refs = [str(r) for r in refs[skipped]]
    # A row already in the database counts as skipped, whatever else might be said of it now.
    bad_rows = np.flatnonzero((reasons != None) & ~skipped)  # noqa: E711
    rep.rejected = int(len(bad_rows))
    for i in bad_rows[:max_errors]:
        # Row numbers as a spreadsheet shows them: header is row 1.
        rep.errors.append({"row": int(i) + 2, "source_ref": str(refs[i]) or None, "reason": reasons[i]})
    sel = np.flatnonzero(ok)
    rep.imported = int(len(sel))
    located = sel[idx[sel] >= 0]
    rep.located = int(len(located))
    rep.needs_location = int(len(sel) - len(located))
    if dry_run or len(sel) == 0:
        tick("done")
        if bar is not None:
            bar.close()
        rep.seconds = time.perf_counter() - t0
        return rep

    # Case numbers per local day and ids from the sequence: the last use of the connection before the
    # write, which the pipeline's thread then has to itself.
    cal = lcal.calendar()
    recv_s = (recv.to_numpy(dtype="datetime64[ns]")[sel].astype(np.int64) / 1e9)
    local_day = lcal._local_ordinals(recv_s, cal.tz)
    case_no = np.empty(len(sel), dtype=object)
    for d in np.unique(local_day):
        ii = np.flatnonzero(local_day == d)
        case_no[ii] = wf.next_case_numbers(conn, city, dt.date.fromordinal(int(d)), len(ii))
    ids = np.array(conn.execute(text("SELECT nextval('case_file_id_seq') FROM generate_series(1, :n)"),
                                {"n": len(sel)}).scalars().all(), dtype=np.int64)
    # The monthly partitions of the batch's cases and events (layers.cases.partitions).
    from layers.cases import partitions

    span = recv.iloc[sel]
    partitions.ensure_for(conn, [span.min(), span.max(), closed.iloc[sel].min(), closed.iloc[sel].max()])
    tick("number")

    # Everything the rounds need, per imported case (positions in ``sel``).
    st = state[sel]
    cat_s = cats[sel]
    urg_s = urg[sel]
    rt_s = rtype[sel]
    chan_s = chan[sel]
    refs_s = refs[sel]
    cat_name = _per_value(cat_s, lambda c: catalog[c]["name"])
    title = colv("title")[sel]
    descr = colv("description")[sel]
    addr_s = addr[sel]
    names = colv("name")[sel]
    phones = colv("phone")[sel]
    source_data = _source_data(None if src_cat is None else src_cat[sel], None if src_status is None else src_status[sel],
                               before[sel], closed_raw[sel])
    idx_s, wx_s, wy_s, loc_src_s, conf_s = idx[sel], wx[sel], wy[sel], loc_src[sel], conf[sel]
    closed_s = closed.to_numpy(dtype="datetime64[ns]")[sel]
    closed_s = np.where(np.isnat(closed_s), np.nan, closed_s.astype(np.int64) / 1e9)
    aid = None if actor is None else str(actor.id)
    arole = None if actor is None else actor.role

    # The limits once (limits() reads its file at each call), the deadlines per round.
    step_lims = {u: wf.step_limit("collected", "", u) for u in wf.URGENCIES}
    first_configured = (dt.datetime(cal.first_year, 1, 1, tzinfo=cal.tz).timestamp() if cal.first_year
                        else float("inf"))

    def _pending_json(p: np.ndarray, unknown_step: np.ndarray, unknown_close: np.ndarray) -> np.ndarray:
        """', "deadline_pending": {…}' for the cases whose deadline is unknown ('' for the others): what
        layers.cases.calendar.fill_pending_deadlines computes it from when the year is loaded."""
        out = np.full(len(p), "", dtype=object)
        for r in np.flatnonzero(unknown_step | unknown_close):
            q = p[r]
            at = str(_ts(recv_s[q:q + 1])[0])
            pend: dict = {"reason": "calendar year not configured"}
            if unknown_step[r]:
                amount, unit = step_lims[urg_s[q]]
                pend["step"] = {"from": at, "amount": amount, "unit": unit, "state": "collected"}
            if unknown_close[r]:
                amount, unit = close_lims[key_codes[q]]
                pend["close"] = {"from": at, "amount": amount, "unit": unit}
            out[r] = ', "deadline_pending": ' + json.dumps(pend)
        return out
    key_codes, key_uniq = pd.factorize(pd.Series([f"{c}|{r}|{u}" for c, r, u in zip(cat_s, rt_s, urg_s, strict=True)]))
    close_lims = [wf.close_limit(c, r or None, u) for c, r, u in (k.split("|") for k in key_uniq)]

    def deadlines(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(step deadline, close deadline) in UNIX seconds, vectorised per class limit; NaN where the
        calendar lacks a year the deadline needs (the case is kept, its deadline flagged unknown)."""
        step_dl = np.full(len(p), np.nan)
        close_dl = np.full(len(p), np.nan)
        rs, u_p, s_p, k_p = recv_s[p], urg_s[p], st[p], key_codes[p]
        for u in wf.URGENCIES:
            mk = (u_p == u) & (s_p == "collected")
            if mk.any():
                step_dl[mk] = lcal.add_many(cal, rs[mk], *step_lims[u])
        order = np.argsort(k_p, kind="stable")
        ks, starts = np.unique(k_p[order], return_index=True)
        for j, ii in zip(ks, np.split(order, starts[1:]), strict=True):
            close_dl[ii] = lcal.add_many(cal, rs[ii], *close_lims[j])
        return step_dl, close_dl

    def build(p: np.ndarray) -> list:
        """The COPY payloads of one round: the cases ``p`` (positions in ``sel``), their events, contacts."""
        k = len(p)
        step_dl, close_dl = deadlines(p)
        s_p = st[p]
        is_open = s_p == "collected"
        unknown_step = is_open & np.isnan(step_dl)
        unknown_close = (s_p != "void") & np.isnan(close_dl)
        rep.deadline_unknown += int((unknown_step | unknown_close).sum())
        rep.approximate_deadlines += int((recv_s[p] < first_configured).sum())
        found = idx_s[p] >= 0
        cell = np.maximum(idx_s[p], 0)
        pts = shapely.set_srid(shapely.points(wx_s[p], wy_s[p]), city.srid)
        wkb = _nullable(shapely.to_wkb(pts, hex=True, include_srid=True), found)
        codes = _nullable(grid.codes[cell], found)
        is_coll = s_p == "collected"
        is_clo = s_p == "closed"
        recv_txt = _ts(recv_s[p])
        close_txt = _ts(close_dl)
        step_txt = np.where(is_coll, _ts(step_dl), "").astype(object)
        closed_txt = np.where(is_clo, _ts(closed_s[p]), "").astype(object)
        case_id = ids[p].astype(object)  # Python ints
        case_cols = [
            case_id, [city.id] * k, case_no[p], [src_kind] * k, chan_s[p], refs_s[p], recv_txt, cat_s[p],
            cat_name[p], rt_s[p], urg_s[p], title[p], descr[p], addr_s[p], wkb, _nullable(loc_src_s[p], found),
            _nullable(conf_s[p], found & np.isfinite(conf_s[p])), _nullable(grid.ids[cell], found), codes,
            [c[:12] if c is not None else None for c in codes], s_p, step_txt, close_txt, closed_txt,
            np.where(closed_txt != "", closed_txt, recv_txt), source_data[p]]

        def events_of(c: np.ndarray, at: np.ndarray, kind: str, from_state, to_state: str, data) -> list:
            """The event columns (EVENT_COLUMNS) of the cases ``c`` (positions in the round); ``data``: one
            text per case of the round, or one for all."""
            m = len(c)
            return [case_id[c], at[c], [kind] * m, [aid] * m, [arole] * m, [from_state] * m, [to_state] * m,
                    data[c] if isinstance(data, np.ndarray) else [data] * m]

        close_json = np.where(close_txt != "", '"' + close_txt + '"', "null").astype(object)
        received = ('{"imported": true, "next_deadline": '
                    + np.where(step_txt != "", '"' + step_txt + '"', "null").astype(object)
                    + ', "close_deadline": ' + close_json + _pending_json(p, unknown_step, unknown_close) + "}")
        ev_parts = [events_of(np.arange(k), recv_txt, "received", None, "collected", received)]
        if is_clo.any():
            met = np.where(np.isfinite(closed_s[p]) & np.isfinite(close_dl),
                           np.where(closed_s[p] <= close_dl, "true", "false"), "null")
            data = ('{"imported": true, "close_deadline": ' + close_json + ', "close_met": ' + met.astype(object) + "}")
            at_txt = np.where(closed_txt != "", closed_txt, recv_txt)
            ev_parts.append(events_of(np.flatnonzero(is_clo), at_txt, "closed", "collected", "closed", data))
        is_void = s_p == "void"
        if is_void.any():
            ev_parts.append(events_of(np.flatnonzero(is_void), recv_txt, "voided", "collected", "void",
                                      '{"imported": true}'))
        events = [np.concatenate([np.asarray(part[j], dtype=object) for part in ev_parts]) for j in range(8)]
        job = [("case_file", CASE_COLUMNS, k, _csv(case_cols)),
               ("case_event", EVENT_COLUMNS, len(events[0]), _csv(events))]
        has_c = (names[p] != "") | (phones[p] != "")
        if has_c.any():
            c = np.flatnonzero(has_c)
            job.append(("case_contact", CONTACT_COLUMNS, len(c),
                        _csv([case_id[c], names[p][c], phones[p][c]])))
        return job

    # The write, pipelined: rounds of cases + events + contacts built here while the thread COPYs the
    # previous one. One transaction (the caller's): a failure anywhere leaves nothing of the file.
    size = max(1, int(chunk or COPY_CHUNK))
    # A small first round: the server starts as soon as possible.
    bounds = [0, *range(min(size, FIRST_ROUND), len(sel), size), len(sel)]
    build_s = 0.0
    use_bulk = bulk_mode(conn) if bulk is None else bool(bulk)
    if use_bulk:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
    pipe = _Pipeline(conn)
    try:
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            tb = time.perf_counter()
            job = build(np.arange(start, end))
            build_s += time.perf_counter() - tb
            pipe.put(job)
    except BaseException:
        pipe.abort()
        raise
    pipe.close()
    fk_s = 0.0
    if use_bulk:
        conn.execute(text("SET LOCAL session_replication_role = origin"))
        tf = time.perf_counter()
        check_foreign_keys(conn, int(ids.min()), int(ids.max()))
        fk_s = time.perf_counter() - tf
    tick("write")
    rep.pipeline = {"rounds": len(bounds) - 1, "build_seconds": round(build_s, 3),
                    "copy_seconds": {t: round(s, 3) for t, s in pipe.seconds.items()}, "rows": dict(pipe.rows),
                    "bulk": use_bulk, "fk_check_seconds": round(fk_s, 3)}
    if TIMING:
        print(f"write: {rep.pipeline}", file=sys.stderr)
    if bar is not None:
        bar.close()
    rep.seconds = time.perf_counter() - t0
    return rep


def _source_data(cat, status, dropped, closed_raw) -> np.ndarray:
    """The source's own words per case as JSON text (NULL when it said nothing): its category label
    and raw status, and a closure dropped because it came before the case was received."""
    k = len(dropped)
    cat = np.full(k, "", dtype=object) if cat is None else cat
    status = np.full(k, "", dtype=object) if status is None else status
    drop = np.where(dropped, closed_raw, "").astype(object)
    key = pd.Series([f"{a}\x00{b}\x00{c}" for a, b, c in zip(cat, status, drop, strict=True)], dtype=object)
    codes, uniq = pd.factorize(key)

    def one(v: str) -> str:
        a, b, c = v.split("\x00")
        d = {n: x for n, x in (("category", a), ("status", b), ("closed_at_dropped", c)) if x}
        if c:
            d["closed_at_dropped_reason"] = "closed before it was received"
        return json.dumps(d, ensure_ascii=False) if d else ""

    return np.array([one(v) for v in uniq], dtype=object)[codes]


# -- command line ----------------------------------------------------------------------------------

def main_import_cases(argv: list[str] | None = None) -> int:
    """``citygrid import cases FILE --city X --mapping M [--dry-run] [--errors report.csv]``."""
    ap = argparse.ArgumentParser(prog="citygrid import cases",
                                 description="批量导入案卷 Import hotline cases from CSV/XLSX/JSON")
    ap.add_argument("file", type=Path)
    ap.add_argument("--city", required=True)
    ap.add_argument("--mapping", help="mapping JSON file (or the name of one in layers/cases/data/mappings)")
    ap.add_argument("--source", default=None, help="hotline (default), inspector, citizen, open311, other")
    ap.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    ap.add_argument("--errors", type=Path, help="write the row-level error report to this CSV")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from citygrid.dbcluster import database_url
    from layers.cases import calendar as lcal
    from layers.core.city import get_city
    from layers.core.db import make_engine

    engine = make_engine(database_url(), pool_size=2)
    lcal.bind(engine)
    try:
        with engine.begin() as conn:
            city = get_city(conn, args.city)
            rep = import_cases(conn, city, args.file, mapping=args.mapping, dry_run=args.dry_run,
                               progress=not args.no_progress, source=args.source)
    except (InputError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.errors:
        pd.DataFrame(rep.errors, columns=["row", "source_ref", "reason"]).to_csv(args.errors, index=False,
                                                                                 encoding="utf-8-sig")
    print(f"{rep.rows} rows: {rep.imported} imported ({rep.located} located, {rep.by_gazetteer} by the gazetteer, "
          f"{rep.needs_location} need a location), {rep.skipped} imported before, {rep.rejected} rejected"
          f"{' (dry run: nothing written)' if rep.dry_run else ''} in {rep.seconds:.1f} s")
    print(f"  cells trimmed of surrounding spaces: {rep.trimmed_cells}; closed before received (kept, closure "
          f"dropped): {rep.closed_before_received}; deadline unknown (calendar year missing): {rep.deadline_unknown}; "
          f"deadlines before the first calendar year (weekends only): {rep.approximate_deadlines}")
    for sp in rep.sentinel_points:
        print(f"  default point ignored: {sp['lat']}, {sp['lon']} ({sp['rows']} rows)")
    reasons = pd.Series([e["reason"] for e in rep.errors]).value_counts() if rep.errors else {}
    for why, k in list(dict(reasons).items())[:10]:
        print(f"  rejected {k:>6}: {why}")
    return 0
