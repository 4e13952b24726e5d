"""The ``citygrid`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from citygrid import settings


def _engine():
    from citygrid.dbcluster import database_url
    from layers.cases import calendar as lcal
    from layers.core.db import make_engine

    engine = make_engine(database_url(), pool_size=2)
    lcal.bind(engine)  # calendar years loaded into the database count in every command
    return engine


def cmd_db(args) -> int:
    from citygrid import dbcluster

    if getattr(args, "target", None) and args.action not in ("replica", "archive"):
        print(f"citygrid db {args.action}: unexpected argument '{args.target}'", file=sys.stderr)
        return 2
    if args.action in DB_PARTITION_ACTIONS:
        return cmd_db_partitions(args)
    if args.action in DB_BACKUP_ACTIONS:
        return cmd_db_backup(args)
    if settings.database().url and args.action != "url":
        print("DATABASE_URL is set: citygrid uses that server and does not manage a cluster of its own.")
        return 0
    if args.action == "start":
        c = dbcluster.start()
        print(f"PostgreSQL {c.major} + PostGIS running: data {c.pgdata}, socket {c.socket_dir}, port {c.port}")
    elif args.action == "stop":
        dbcluster.stop()
    elif args.action == "status":
        st = dbcluster.status()
        print(json.dumps(st, indent=1))
        return 0 if st["running"] else 3
    elif args.action == "destroy":
        dbcluster.destroy()
    elif args.action == "url":
        print(dbcluster.database_url(start_if_needed=False))
    return 0


DB_BACKUP_ACTIONS = ("backup", "backups", "restore", "replica")
DB_PARTITION_ACTIONS = ("partitions", "archive")


def cmd_db_partitions(args) -> int:
    """``citygrid db partitions``: the monthly partitions of the case tables for the current UTC month and
    the next three, and for the months of rows waiting in the default partitions (they move there);
    ``citygrid db archive YYYY-MM --to DIR``: dump a closed month and remove it (layers/cases/partitions.py)."""
    from layers.cases import partitions
    from layers.core.errors import CodedError

    engine = _engine()
    try:
        if args.action == "partitions":
            with engine.begin() as conn:
                made = partitions.upkeep(conn)
                print(json.dumps({"created": made, "partitions": partitions.partitions(conn)}, indent=1))
            return 0
        if not args.target or not args.to:
            print("citygrid db archive YYYY-MM --to DIR", file=sys.stderr)
            return 2
        try:
            info = partitions.archive(engine, args.target, args.to, log=lambda m: print(m, file=sys.stderr))
        except CodedError as e:
            print(f"citygrid db archive: {e}", file=sys.stderr)
            return 2
        print(json.dumps(info, indent=1))
        return 0
    finally:
        engine.dispose()


def cmd_db_backup(args) -> int:
    """``citygrid db backup|backups|restore|replica``: pgBackRest backups of the own cluster and its file
    stores (citygrid/backup.py), and its read replica (citygrid/replica.py)."""
    if settings.database().url:
        print("DATABASE_URL is set: back up that server with pgBackRest on its host (docs/OPERATIONS.md); "
              "citygrid manages backups and replicas of its own cluster only.", file=sys.stderr)
        return 2
    if args.action == "replica":
        from citygrid import replica

        what = args.target or "status"
        if what == "start":
            print(json.dumps(replica.start(log=lambda m: print(m, file=sys.stderr)), indent=1))
        elif what == "stop":
            replica.stop(log=lambda m: print(m, file=sys.stderr))
        elif what == "status":
            st = replica.status()
            print(json.dumps(st, indent=1))
            return 0 if st["running"] else 3
        else:
            print("citygrid db replica start|stop|status", file=sys.stderr)
            return 2
        return 0
    from citygrid import backup

    def log(msg):  # progress on stderr: stdout is the JSON answer
        print(msg, file=sys.stderr)

    if args.action == "backup":
        print(json.dumps(backup.backup(args.type or "full", log=log), indent=1))
    elif args.action == "backups":
        print(json.dumps(backup.backups(log=log), indent=1))
    else:
        to = backup.parse_time(args.to) if args.to else None
        print(json.dumps(backup.restore(to=to, force=args.force, log=log), indent=1))
    return 0


def cmd_migrate(_args) -> int:
    from layers.core.db import current_revision, migrate

    engine = _engine()
    migrate(engine)
    print(f"schema at revision {current_revision(engine)}")
    return 0


def _print_demo(tokens: dict) -> None:
    api = settings.api()
    base = f"http://{api.host}:{api.port}"
    print(f"\n演示用户 Demo users — 登录 sign in at {base}/login (用户名 name / 密码 password; "
          "API: Authorization: Bearer <token>):")
    for name, entry in tokens.items():
        print(f"  {name:<16} {entry['role']:<11} {entry.get('password', ''):<14} {entry['token']}")
    print("\n页面 Pages:")
    print(f"  首页 Home        {base}/")
    print(f"  市民 Citizens    {base}/public")
    print(f"  受理 Operators   {base}/operator")
    print(f"  采集 Inspectors  {base}/inspector")
    print(f"  监督 Supervisors {base}/supervisor")
    print(f"  规划 Planners    {base}/planner    (OGC API: {base}/api/v1/ogc)")
    print(f"  登录 Sign in     {base}/login      管理 Admin {base}/admin")
    print(f"  接口 API docs    {base}/docs")
    print(f"  健康 Health      {base}/api/v1/health")


def cmd_demo(args) -> int:
    from layers.core.db import migrate
    from layers.demo.haimen import ensure_demo_users, load_demo

    engine = _engine()
    migrate(engine)
    with engine.begin() as conn:
        load_demo(conn, cell_size=args.cell_size)
        tokens = ensure_demo_users(conn)
    if not args.quiet:
        _print_demo(tokens)
    return 0


def cmd_city(args) -> int:
    from layers.core import city as lcity

    engine = _engine()
    with engine.begin() as conn:
        boundary, src = lcity.read_boundary(Path(args.file), args.crs)
        city = lcity.create_city(conn, slug=args.slug, name=args.name, adcode=args.adcode, boundary=boundary,
                                 src_crs=src, name_en=args.name_en,
                                 working_epsg=args.working_epsg or settings.grid().working_epsg)
        grid_id = lcity.generate_grid(conn, city, size=args.cell_size)
    print(f"city {city.slug}: working CRS {city.working_crs}, grid {grid_id}")
    return 0


def cmd_grid(args) -> int:
    from layers.core import city as lcity

    engine = _engine()
    with engine.begin() as conn:
        city = lcity.get_city(conn, args.city)
        if args.action == "generate":
            gid = lcity.generate_grid(conn, city, size=args.size)
        else:
            gid = lcity.import_grid(conn, city, Path(args.file), code_field=args.code_field, crs=args.crs,
                                    activate=args.activate)
    print(f"grid {gid}")
    return 0


def cmd_users(args) -> int:
    from layers.core import users as lusers
    from layers.core.errors import Conflict, InputError, NotFound

    engine = _engine()
    try:
        with engine.begin() as conn:
            if args.action == "add":
                password = _read_password(args) if args.password_stdin else None
                user, token = lusers.add_user(conn, args.name, args.role, department=args.department,
                                              area_code=args.area, expires_in_days=args.expires_in,
                                              password=password)
                acc = lusers.account(conn, user.id)
                print(f"user {user.name} ({user.role}) token: {token}")
                print(f"the token is shown only now; keep it. It expires {acc['token_expires_at']:%Y-%m-%d %H:%M %Z}")
                if password is not None:
                    print("password set: the user signs in at /login")
            elif args.action in ("passwd", "disable", "enable"):
                return _users_sign_in(conn, args)
            elif args.action == "revoke":
                acc = lusers.revoke(conn, args.name)
                print(f"user {acc['name']}: token revoked at {acc['token_revoked_at']:%Y-%m-%d %H:%M:%S %Z}"
                      " (a new one: citygrid users renew NAME)")
            elif args.action == "renew":
                acc, token = lusers.issue_token(conn, args.name, expires_in_days=args.expires_in)
                print(f"user {acc['name']} ({acc['role']}) new token: {token}")
                print(f"the token is shown only now; keep it (the old one no longer works). "
                      f"It expires {acc['token_expires_at']:%Y-%m-%d %H:%M %Z}")
            else:
                for a in lusers.accounts(conn):
                    used = f"{a['last_used_at']:%Y-%m-%d %H:%M}" if a["last_used_at"] else "never"
                    print(f"{a['id']:>4} {a['name']:<20} {a['role']:<11} {a['department'] or '':<10} "
                          f"{a['area_code'] or '':<15} token {a['token_state']:<7} "
                          f"expires {a['token_expires_at']:%Y-%m-%d} last used {used}"
                          f"{'' if a['has_password'] else ' no password'}{'' if a['active'] else ' DISABLED'}")
    except (InputError, NotFound, Conflict) as e:
        print(f"citygrid users {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


# -- users: passwords and sign-in (issue 13) ---------------------------------------------------------
def _read_password(args) -> str:
    """The password: the first line of standard input (``--password-stdin``), else asked twice on the
    terminal. Never echoed, never printed."""
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("新密码 New password: ")
    if getpass.getpass("再输入一次 Again: ") != first:
        from layers.core.errors import InputError

        raise InputError("两次输入的密码不一致 the two passwords differ")
    return first


def _users_sign_in(conn, args) -> int:
    from layers.core import users as lusers

    if args.action == "passwd":
        acc = lusers.set_password(conn, args.name, _read_password(args))
        print(f"user {acc['name']}: password set at {acc['password_changed_at']:%Y-%m-%d %H:%M:%S %Z} "
              "(the user's open sessions were ended)")
    else:
        acc = lusers.set_active(conn, args.name, args.action == "enable")
        print(f"user {acc['name']}: {'enabled' if acc['active'] else 'disabled (token, password and sessions stop working)'}")
    return 0


def _users_sign_in_parsers(usub) -> None:
    pw = usub.add_parser("passwd", help="set a user's password (first line of stdin with --password-stdin)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    usub.add_parser("disable", help="disable a user: token, password and sessions stop working").add_argument("name")
    usub.add_parser("enable", help="enable a disabled user again").add_argument("name")


def cmd_calendar(args) -> int:
    """``citygrid calendar import FILE`` (a year: the State Council notice's holidays and make-up
    workdays, format of layers/cases/data/calendar_years/2026.json) and ``citygrid calendar list``."""
    from layers.cases import calendar as lcal

    engine = _engine()
    with engine.begin() as conn:
        if args.action == "import":
            try:
                doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
            except FileNotFoundError:
                print(f"citygrid: no file {args.file}", file=sys.stderr)
                return 2
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                print(f"citygrid: {args.file} is not a JSON file: {e}", file=sys.stderr)
                return 2
            out = lcal.import_year(conn, doc, loaded_by="cli")
            f = out["deadlines_filled"]
            print(f"calendar year {out['year']} loaded: {out['holidays']} holidays, {out['workdays']} make-up workdays "
                  f"(source: {out['source'].get('title')}); configured years {out['configured_years']}, deadlines "
                  f"computable up to {out['last_year']}-12-31; deadlines filled in: {f['step']} step, {f['close']} close"
                  f"{', still unknown: ' + str(f['still_unknown']) if f['still_unknown'] else ''}")
        else:
            cal = lcal.build(lcal.database_years(conn))
            for y in sorted(cal.years):
                src = cal.sources.get(y) or {}
                print(f"{y}  {src.get('title', '?')}  {src.get('document_no', '')}  {src.get('date', '')}  "
                      f"[{src.get('loaded_from', '')}]")
            for y, why in lcal.base_config().get("not_configured", {}).items():
                if int(y) in cal.years:  # loaded since the release was made
                    continue
                print(f"{y}  not configured: {why[:120]}…")
    return 0


IMPORTERS = {
    "assets": ("layers.assets.imports", "main_import_assets"),
    "cases": ("layers.cases.hotline", "main_import_cases"),
}


def cmd_import(args) -> int:
    import importlib

    module, func = IMPORTERS[args.what]
    return getattr(importlib.import_module(module), func)(args.rest) or 0


def cmd_bulletin(args) -> int:
    from layers.analytics.bulletin import main_bulletin

    return main_bulletin(args.rest) or 0


def cmd_alerts(args) -> int:
    from layers.analytics.alerts import main_daily

    return main_daily(args.rest) or 0


def cmd_la311(args) -> int:
    from layers.demo.synthetic import main_la311

    return main_la311(args.rest) or 0


def cmd_notify(args) -> int:
    """The notification worker: template messages and SMS from the outbox (layers/channels/notify.py)."""
    import logging

    from layers.channels import notify

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = _engine()
    if args.once:
        with engine.begin() as conn:
            on = notify.sync_channels(conn)
        counts = notify.run_once(engine, notify.senders(engine))
        print(json.dumps({"channels_on": {k: v for k, v in on.items() if v}, **counts}))
        return 0
    notify.run_forever(engine)
    return 0


def cmd_wechat(args) -> int:
    """The WeChat account's custom menu (我要反映 / 查询进度 / 便民服务)."""
    from layers.channels import wechat as lwx
    from layers.core.errors import InputError

    acct = lwx.account(args.city)
    if acct is None or not acct.secret:
        raise InputError(f"city '{args.city}' has no WeChat account (app_id, secret, token) in CITYGRID_WECHAT_ACCOUNTS")
    body = lwx.menu(acct, settings.wechat().public_base) if args.dry_run else lwx.create_menu(acct, _engine())
    print(json.dumps(body, ensure_ascii=False, indent=2))
    return 0


def default_workers() -> int:
    """HTTP worker processes when neither ``--workers`` nor CITYGRID_API_WORKERS says: the cores, at most 8."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _warn_connections(url: str, workers: int) -> None:
    """Say so when the workers' pools together may ask the server for more connections than it has."""
    db = settings.database()
    per_worker = db.pool_size + db.max_overflow + db.async_pool_max + 3  # + listener, export jobs, limits
    try:
        from sqlalchemy import create_engine, text

        eng = create_engine(url, poolclass=__import__("sqlalchemy.pool", fromlist=["NullPool"]).NullPool)
        with eng.connect() as conn:
            limit = int(conn.execute(text("SHOW max_connections")).scalar_one())
        eng.dispose()
    except Exception:  # noqa: BLE001 - only a warning; the server says more when it starts
        return
    if workers * per_worker > limit:
        print(f"citygrid: warning: {workers} workers may open up to {workers * per_worker} connections (pool "
              f"{db.pool_size}+{db.max_overflow}, intake {db.async_pool_max}, +3 each) but the server allows "
              f"{limit}: lower CITYGRID_DB_MAX_OVERFLOW or put PgBouncer in front (docs/SCALING.md)", file=sys.stderr)


def cmd_serve(args) -> int:
    import uvicorn

    from citygrid.dbcluster import database_url

    api = settings.api()
    workers = getattr(args, "workers", None) or api.workers or default_workers()
    # The database is found (and the own cluster started) once, here: the workers inherit its URL.
    os.environ["DATABASE_URL"] = url = database_url()
    print(f"citygrid: {workers} worker process{'es' if workers > 1 else ''}", file=sys.stderr)
    _warn_connections(url, workers)
    uvicorn.run("api.app:create_app", factory=True, host=args.host or api.host, port=args.port or api.port,
                workers=workers, log_level="info", access_log=False,
                # the client's address is the socket's unless CITYGRID_API_TRUSTED_PROXY_HOPS says otherwise
                # (uvicorn's own default believes X-Forwarded-For from 127.0.0.1)
                proxy_headers=False)
    return 0


def cmd_run(args) -> int:
    """What `make run` does: database, schema, demo city and users, then the server."""
    cmd_db(argparse.Namespace(action="start"))
    cmd_demo(argparse.Namespace(cell_size=settings.grid().cell_size, quiet=False))
    return cmd_serve(args)


def cmd_bench(args) -> int:
    import runpy

    bench = settings.PROJECT_ROOT / "bench" / f"bench_{args.what}.py"
    sys.argv = [str(bench), *args.rest]
    runpy.run_path(str(bench), run_name="__main__")
    return 0


# -- text: classification, places, recurring problems, reply quality (issue 15) ------------------

def _text_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="citygrid text", description="案件文本 Chinese text of the cases")
    sub = ap.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train a classifier: on a labelled CSV/XLSX file, or on a city's closed cases")
    tr.add_argument("file", nargs="?", help="CSV/XLSX with a text and a label column")
    tr.add_argument("--text", help="text column(s), comma separated (e.g. 留言主题,留言详情)")
    tr.add_argument("--label", help="label column")
    tr.add_argument("--name", help="model name (default: the city's slug)")
    tr.add_argument("--city", help="city slug: train on its closed cases' class codes (or tie a file's model to it)")
    tr.add_argument("--level", type=int, default=2, help="class level of the city's codes: 1, 2 or 3 (default 2)")
    tr.add_argument("--taxonomy", help="label taxonomy CSV (first level, lower levels) as extra evidence")
    tr.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds (default 5)")
    tr.add_argument("--no-cv", action="store_true", help="fit without cross-validation")
    cl = sub.add_parser("classify", help="classify the rows of a CSV/XLSX file with a stored model")
    cl.add_argument("file")
    cl.add_argument("--model", required=True)
    cl.add_argument("--text", required=True, help="text column(s), comma separated")
    cl.add_argument("--out", required=True, help="output CSV: the input's rows with label and probability")
    cl.add_argument("--version", type=int)
    sub.add_parser("models", help="stored models, their versions and cross-validated macro-F1")
    rc = sub.add_parser("recurring", help="热点问题: group a city's cases by text, place and period")
    rc.add_argument("--city", required=True)
    rc.add_argument("--until", help="last day (YYYY-MM-DD; default the latest day with cases)")
    rc.add_argument("--days", type=int, help="window in days (default CITYGRID_TEXT_RECURRING_DAYS)")
    rc.add_argument("--top", type=int, default=10)
    rq = sub.add_parser("replies", help="reply quality of a CSV/XLSX of messages and replies")
    rq.add_argument("file")
    rq.add_argument("--message", default="留言主题,留言详情", help="message column(s)")
    rq.add_argument("--reply", default="答复意见")
    rq.add_argument("--message-time", default="留言时间")
    rq.add_argument("--reply-time", default="答复时间")
    rq.add_argument("--out", help="CSV of the scores (row number and scores only, no text)")
    rq.add_argument("--calibrate", action="store_true",
                    help="store this file's relevance anchors (layers/text/data/reply_calibration.json) first")
    return ap


def cmd_text(args) -> int:
    from layers.text import cli as tcli

    return tcli.run(_text_parser().parse_args(args.rest), _engine)


def cmd_gazetteer(args) -> int:
    from layers.cases import gazetteer
    from layers.core import city as lcity

    ap = argparse.ArgumentParser(prog="citygrid gazetteer", description="地名库 the city's named places")
    sub = ap.add_subparsers(dest="action", required=True)
    ld = sub.add_parser("load", help="load roads, communities, POIs from GeoJSON/GeoPackage/Shapefile(zip)/CSV")
    ld.add_argument("file")
    ld.add_argument("--city", required=True)
    ld.add_argument("--name-field", default="name")
    ld.add_argument("--kind-field", default="kind")
    ld.add_argument("--kind", help="kind of rows without one: road, community, poi, street, district, place")
    ld.add_argument("--crs", help="the file's CRS if not its own (CSV: default EPSG:4326)")
    a = ap.parse_args(args.rest)
    with _engine().begin() as conn:
        city = lcity.get_city(conn, a.city)
        res = gazetteer.load_gazetteer_file(conn, city, Path(a.file), name_field=a.name_field,
                                            kind_field=a.kind_field, kind=a.kind, crs=a.crs)
    print(f"{res['loaded']} places loaded ({', '.join(f'{k} {v}' for k, v in sorted(res['by_kind'].items()))}), "
          f"{res['skipped']} rows skipped (no name or geometry)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citygrid", description="citygrid 网格化城市管理")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the project's own PostgreSQL + PostGIS cluster")
    db.add_argument("action", choices=["start", "stop", "status", "destroy", "url", *DB_BACKUP_ACTIONS,
                                       *DB_PARTITION_ACTIONS],
                    help="backup [--type full|diff|incr], backups (list), restore [--to TIME] [--force], "
                         "replica start|stop|status, partitions (this month + 3 ahead), archive YYYY-MM --to DIR")
    db.add_argument("target", nargs="?", help="replica: start, stop or status; archive: the month YYYY-MM")
    db.add_argument("--type", choices=["full", "diff", "incr"], help="backup: full (default), diff or incr")
    db.add_argument("--to", metavar="TIME", help="restore: the instant (ISO 8601, e.g. 2026-12-05T10:30:00+08:00); "
                                                 "archive: the directory of the dump")
    db.add_argument("--force", action="store_true", help="restore: stop a running cluster and overwrite it")
    db.set_defaults(func=cmd_db)

    sub.add_parser("migrate", help="bring the schema up to date").set_defaults(func=cmd_migrate)

    demo = sub.add_parser("demo", help="load the Haimen demo city and its users (idempotent)")
    demo.add_argument("--cell-size", type=float, default=settings.grid().cell_size)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    city = sub.add_parser("city", help="import a city boundary and generate its grid")
    city.add_argument("action", choices=["import"])
    city.add_argument("file")
    city.add_argument("--slug", required=True)
    city.add_argument("--name", required=True)
    city.add_argument("--adcode", required=True, help="6-digit district code (GB/T 2260)")
    city.add_argument("--crs", help="the file's CRS if not its own: EPSG:4326, EPSG:4490, GCJ-02, BD-09")
    city.add_argument("--name-en")
    city.add_argument("--working-epsg", type=int)
    city.add_argument("--cell-size", type=float, default=settings.grid().cell_size)
    city.set_defaults(func=cmd_city)

    grid = sub.add_parser("grid", help="generate a regular grid or import an official one")
    gsub = grid.add_subparsers(dest="action", required=True)
    gen = gsub.add_parser("generate")
    gen.add_argument("city")
    gen.add_argument("--size", type=float, default=settings.grid().cell_size)
    imp = gsub.add_parser("import")
    imp.add_argument("city")
    imp.add_argument("file")
    imp.add_argument("--code-field", default="code")
    imp.add_argument("--crs")
    imp.add_argument("--activate", action="store_true")
    grid.set_defaults(func=cmd_grid)

    users = sub.add_parser("users", help="users and their bearer tokens")
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", required=True)
    add.add_argument("--department")
    add.add_argument("--area", help="admin code or cell code of the user's area")
    days_help = (f"days the token is valid (1-3650; default {settings.auth().token_days}, "
                 "setting CITYGRID_AUTH_TOKEN_DAYS)")
    add.add_argument("--expires-in", type=int, metavar="DAYS", help=days_help)
    add.add_argument("--password-stdin", action="store_true",
                     help="also set a password (first line of standard input) for signing in at /login")
    rev = usub.add_parser("revoke", help="revoke the user's token now")
    rev.add_argument("name")
    ren = usub.add_parser("renew", help="issue a new token (the old one stops working; lifts a revocation)")
    ren.add_argument("name")
    ren.add_argument("--expires-in", type=int, metavar="DAYS", help=days_help)
    usub.add_parser("list", help="users, their tokens' state, expiry and last use (never the tokens)")
    _users_sign_in_parsers(usub)
    users.set_defaults(func=cmd_users)

    cal = sub.add_parser("calendar", help="working-time calendar: load a year's holidays (citygrid calendar import FILE)")
    csub = cal.add_subparsers(dest="action", required=True)
    cimp = csub.add_parser("import", help="load a year (the State Council notice) for every process")
    cimp.add_argument("file")
    csub.add_parser("list", help="configured years and their sources")
    cal.set_defaults(func=cmd_calendar)

    imp_all = sub.add_parser("import", help="batch imports: assets or cases (see `citygrid import X --help`)", add_help=False)
    imp_all.add_argument("what", choices=sorted(IMPORTERS))
    imp_all.add_argument("rest", nargs=argparse.REMAINDER)
    imp_all.set_defaults(func=cmd_import)

    bul = sub.add_parser("bulletin", help="the monthly bulletin (月度简报), e.g. citygrid bulletin 2026-10", add_help=False)
    bul.add_argument("rest", nargs=argparse.REMAINDER)
    bul.set_defaults(func=cmd_bulletin)

    al = sub.add_parser("alerts", help="the daily burst scan and surge rule (舆情), storing alerts", add_help=False)
    al.add_argument("rest", nargs=argparse.REMAINDER)
    al.set_defaults(func=cmd_alerts)

    la = sub.add_parser("la311", help="demo: the whole pipeline on 10,000 real Los Angeles 311 cases", add_help=False)
    la.add_argument("rest", nargs=argparse.REMAINDER)
    la.set_defaults(func=cmd_la311)

    for name, func in (("serve", cmd_serve), ("run", cmd_run)):
        s = sub.add_parser(name, help="start the HTTP server" + (" after db, schema and demo" if name == "run" else ""))
        s.add_argument("--host")
        s.add_argument("--port", type=int)
        s.add_argument("--workers", type=int, help="HTTP worker processes (default: CITYGRID_API_WORKERS, else the "
                                                 "machine's cores, at most 8)")
        s.set_defaults(func=func)

    n = sub.add_parser("notify", help="notifications to citizens (WeChat template messages, SMS) from the outbox")
    n.add_argument("action", choices=["run"])
    n.add_argument("--once", action="store_true", help="send what is due, then stop")
    n.set_defaults(func=cmd_notify)

    w = sub.add_parser("wechat", help="the WeChat official account: create its custom menu")
    w.add_argument("action", choices=["menu"])
    w.add_argument("city")
    w.add_argument("--dry-run", action="store_true", help="print the menu without sending it")
    w.set_defaults(func=cmd_wechat)

    tx = sub.add_parser("text", help="案件文本: train/classify (智能分拨), recurring problems, reply quality", add_help=False)
    tx.add_argument("rest", nargs=argparse.REMAINDER)
    tx.set_defaults(func=cmd_text)
    gz = sub.add_parser("gazetteer", help="地名库: load named places from a GIS/POI file", add_help=False)
    gz.add_argument("rest", nargs=argparse.REMAINDER)
    gz.set_defaults(func=cmd_gazetteer)

    b = sub.add_parser("bench", help="benchmarks (see bench/)")
    b.add_argument("what", choices=sorted(p.stem.removeprefix("bench_")
                                          for p in (settings.PROJECT_ROOT / "bench").glob("bench_*.py")))
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from citygrid.dbcluster import ClusterError
    from gis.crs import CRSError
    from layers.core.errors import Conflict, InputError, NotFound

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the pass-through commands hand their options to their own parsers
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.rest = unknown + args.rest
    try:
        return args.func(args) or 0
    except (ClusterError, InputError, NotFound, Conflict, CRSError) as e:
        print(f"citygrid: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
