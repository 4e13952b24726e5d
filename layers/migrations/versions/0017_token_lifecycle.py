"""Token lifecycle and keyed query codes.

Bearer tokens (one per user, as before: columns of ``app_user``, not a token table — the CLI, the
demo and every check know a user by its one token, and rotating it is issuing a new one):
``token_issued_at``; ``token_expires_at`` (every token ends: tokens issued before this revision get
``CITYGRID_AUTH_TOKEN_DAYS`` from now, so nobody is locked out by the upgrade); ``token_revoked_at``;
``last_used_at`` (to the minute). Expiry happens by time, so no column can be flipped at the right
moment: the fast intake's token check inside ``cg_file_reports`` is redefined here to test
revocation and expiry itself (answering 401 with the reason) and to write the last use at most once
a minute per token, skipping a row another transaction holds. The rest of the function is that of
0012, unchanged.

Query codes: until now ``query_code_hash`` was sha256(case number ":" code), which a copy of the
database undoes in 10^6 tries. The server's secret key (``citygrid.secretkey``: the setting
``CITYGRID_SECRET_KEY`` or ``<var_dir>/secret_key``) never enters the database, so a scheme per row:

- scheme 2 (new rows): sha256(case number ":" HMAC(key, "query-code:" code)). Python sends the
  keyed digest in place of the code (``layers.workflow.plan_case``); the write functions hash it with
  the case number they assign, unchanged. The database never sees the code.
- scheme 1 (rows issued before): HMAC(key, "query-code-v1:" old sha256), computed here in Python
  with the same key the service uses (the migration runs with the service's settings), without
  knowing any code. A look-up computes the old sha256 from the code typed, then the HMAC.

Revision ID: 0017
Revises: 0012
"""

import hashlib
import hmac

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0012"
branch_labels = None
depends_on = None

#: The fast intake's batch write of 0012 with the token check of this revision.
FILE_REPORTS = r"""CREATE OR REPLACE FUNCTION cg_file_reports(p jsonb) RETURNS jsonb LANGUAGE plpgsql
-- The case table's rollup trigger upserts one row per (cell, day, class, channel) of the batch:
-- sorted grouping (not hashed) makes it take them in key order, so that two batches written at the
-- same time never take two shared rows in opposite orders (a deadlock).
SET enable_hashagg = off
AS $$
-- p: an array of {"p": <a report: report, case, result, grid_id, grid_version (layers.reports.plan_report)>}
-- with either "token_hash" and "roles" (the bearer's token, checked here) or "user_id" and
-- "user_role" (a caller that checked them). The answer: an array, in p's order, of
--   {"status": 201, "result": ...}  recorded
--   {"status": 200, "result": ...}  a retry of the same key: the first result
--   {"status": 409, "message": ...} the key was used for a different report
--   {"status": 410, "message": ...} the grid changed since the report was snapped: snap again
--   {"status": 401, "reason": "unknown"|"expired"|"revoked"} / {"status": 403, "role": ...}  the token
--                                  does not open (migration 0017) / its role is not allowed.
DECLARE
    n integer := jsonb_array_length(p);
    v_user integer[]; v_role text[]; v_known boolean[]; v_why text[]; v_allowed boolean[]; v_grid_ok boolean[];
    v_prev_hash text[]; v_prev_resp jsonb[];
    v_e jsonb[];
    v_again integer[] := array_fill(0, ARRAY[n]);  -- a retry of the batch's report k
    v_answer jsonb[] := array_fill(NULL::jsonb, ARRAY[n]);
    v_new boolean[] := array_fill(false, ARRAY[n]);
    v_rid bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_cid bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_no text[] := array_fill(NULL::text, ARRAY[n]);
    v_orig bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_ostate text[] := array_fill(NULL::text, ARRAY[n]);
    v_ono text[] := array_fill(NULL::text, ARRAY[n]);
    v_oin integer[] := array_fill(NULL::integer, ARRAY[n]);  -- the original is this batch's report k
    v_x float8[] := array_fill(NULL::float8, ARRAY[n]);
    v_y float8[] := array_fill(NULL::float8, ARRAY[n]);
    v_at timestamptz[] := array_fill(NULL::timestamptz, ARRAY[n]);
    v_result jsonb[] := array_fill(NULL::jsonb, ARRAY[n]);
    v_claimed bigint[];
    i integer; j integer;
    e jsonb; r jsonb; c jsonb;
    v_srid integer; v_loc geometry; v_open text[]; v_radius float8; v_window float8;
    v_best integer; v_best_d float8; v_d float8;
    v_eid bigint; v_ed float8; v_erec timestamptz; v_lock record;
    v_key text; v_prev record;
BEGIN
    IF n = 0 THEN RETURN '[]'::jsonb; END IF;
    -- Every token, grid and earlier use of the key, in one statement. A token opens while it is
    -- neither revoked nor expired (migration 0017).
    SELECT array_agg(t.e ORDER BY t.ord),
           array_agg(coalesce((t.e->>'user_id')::integer, u.id) ORDER BY t.ord),
           array_agg(coalesce(t.e->>'user_role', u.role) ORDER BY t.ord),
           array_agg(t.e ? 'user_id' OR (u.id IS NOT NULL AND u.token_revoked_at IS NULL
                                         AND u.token_expires_at > now()) ORDER BY t.ord),
           array_agg(CASE WHEN u.id IS NULL THEN 'unknown' WHEN u.token_revoked_at IS NOT NULL THEN 'revoked'
                          ELSE 'expired' END ORDER BY t.ord),
           array_agg(t.e ? 'user_id' OR u.role IN (SELECT jsonb_array_elements_text(t.e->'roles')) ORDER BY t.ord),
           array_agg(EXISTS (SELECT 1 FROM grid g WHERE g.id = (t.e->'p'->>'grid_id')::integer
                                  AND g.city_id = (t.e->'p'->'report'->>'city_id')::integer AND g.active
                                  AND g.created_at::text = t.e->'p'->>'grid_version') ORDER BY t.ord),
           array_agg(prev.request_hash ORDER BY t.ord), array_agg(prev.response ORDER BY t.ord)
    INTO v_e, v_user, v_role, v_known, v_why, v_allowed, v_grid_ok, v_prev_hash, v_prev_resp
    FROM jsonb_array_elements(p) WITH ORDINALITY t(e, ord)
    LEFT JOIN app_user u ON NOT (t.e ? 'user_id') AND u.token_hash = t.e->>'token_hash' AND u.active
    LEFT JOIN field_report prev
           ON prev.user_id = coalesce((t.e->>'user_id')::integer, u.id)
          AND prev.idempotency_key = t.e->'p'->'report'->>'idempotency_key';

    -- The tokens' last use, to the minute: written only when older than 60 s (not on every
    -- report); a user row another transaction holds is skipped, never waited for.
    UPDATE app_user SET last_used_at = now()
    WHERE id IN (SELECT a.id FROM app_user a
                 WHERE a.id IN (SELECT v_user[k] FROM generate_subscripts(v_e, 1) k
                                WHERE v_known[k] AND NOT (v_e[k] ? 'user_id'))
                   AND (a.last_used_at IS NULL OR a.last_used_at <= now() - interval '60 seconds')
                 FOR NO KEY UPDATE SKIP LOCKED);

    -- Report by report, in order, in memory: what each one is, its ids and its original.
    FOR i IN 1..n LOOP
        e := v_e[i]->'p'; r := e->'report'; c := e->'case';
        v_key := r->>'idempotency_key';
        IF NOT v_known[i] THEN
            v_answer[i] := jsonb_build_object('status', 401, 'reason', v_why[i]); CONTINUE;
        ELSIF NOT v_allowed[i] THEN
            v_answer[i] := jsonb_build_object('status', 403, 'role', v_role[i]); CONTINUE;
        ELSIF NOT v_grid_ok[i] THEN
            v_answer[i] := jsonb_build_object('status', 410, 'message', 'the city''s grid changed: snap again');
            CONTINUE;
        END IF;
        -- The key: used before this batch, or by an earlier report of it.
        IF v_prev_hash[i] IS NOT NULL THEN
            v_answer[i] := CASE WHEN v_prev_hash[i] = r->>'request_hash'
                                THEN jsonb_build_object('status', 200, 'result', v_prev_resp[i])
                                ELSE jsonb_build_object('status', 409, 'message', format(
                'Idempotency-Key ''%s'' was used already for a different report: use a new key', v_key)) END;
            CONTINUE;
        END IF;
        FOR j IN 1..i - 1 LOOP
            IF v_new[j] AND v_user[j] = v_user[i] AND v_e[j]->'p'->'report'->>'idempotency_key' = v_key THEN
                v_again[i] := j;
                EXIT;
            END IF;
        END LOOP;
        IF v_again[i] > 0 THEN
            j := v_again[i];
            v_answer[i] := CASE WHEN v_e[j]->'p'->'report'->>'request_hash' = r->>'request_hash'
                                THEN jsonb_build_object('status', 200, 'result', v_result[j])
                                ELSE jsonb_build_object('status', 409, 'message', format(
                'Idempotency-Key ''%s'' was used already for a different report: use a new key', v_key)) END;
            CONTINUE;
        END IF;
        -- A new report: its ids, its case number, its original.
        v_new[i] := true;
        v_rid[i] := nextval('field_report_id_seq');
        v_cid[i] := nextval('case_file_id_seq');
        v_no[i] := cg_case_no(c->>'case_no_prefix');
        v_srid := (c->>'srid')::integer;
        v_x[i] := (r->>'x')::float8; v_y[i] := (r->>'y')::float8;
        v_at[i] := (c->>'received_at')::timestamptz;
        v_loc := ST_SetSRID(ST_MakePoint(v_x[i], v_y[i]), v_srid);
        v_open := ARRAY(SELECT jsonb_array_elements_text(c->'dup'->'open'));
        v_radius := (c->'dup'->>'radius_m')::float8;
        v_window := (c->'dup'->>'window_h')::float8;
        SELECT * INTO v_eid, v_ed, v_erec
        FROM cg_nearest_open((c->>'city_id')::integer, c->>'category_code', v_loc, v_at[i], v_radius, v_window,
                             v_open, NULL);
        -- The batch's earlier reports are cases too, written just below: the same rule among them.
        v_best := NULL;
        IF 'collected' = ANY(v_open) THEN
            FOR j IN 1..i - 1 LOOP
                CONTINUE WHEN NOT v_new[j] OR v_orig[j] IS NOT NULL;
                CONTINUE WHEN v_e[j]->'p'->'case'->>'city_id' <> c->>'city_id'
                           OR v_e[j]->'p'->'case'->>'category_code' <> c->>'category_code';
                CONTINUE WHEN v_at[j] NOT BETWEEN v_at[i] - make_interval(secs => v_window * 3600) AND v_at[i];
                v_d := sqrt((v_x[j] - v_x[i]) ^ 2 + (v_y[j] - v_y[i]) ^ 2);
                CONTINUE WHEN v_d > v_radius;
                IF v_best IS NULL OR v_d < v_best_d OR (v_d = v_best_d AND v_at[j] < v_at[v_best]) THEN
                    v_best := j; v_best_d := v_d;
                END IF;
            END LOOP;
        END IF;
        IF v_eid IS NOT NULL AND (v_best IS NULL OR v_ed < v_best_d OR (v_ed = v_best_d AND v_erec <= v_at[v_best])) THEN
            -- Share-locked and checked again: until commit it can be neither closed nor merged, and
            -- other duplicates of it do not wait.
            SELECT cf.state, cf.case_no INTO v_lock FROM case_file cf
            WHERE cf.id = v_eid AND cf.merged_into IS NULL AND cf.state = ANY(v_open) FOR SHARE;
            IF FOUND THEN
                v_orig[i] := v_eid; v_ostate[i] := v_lock.state; v_ono[i] := v_lock.case_no;
            END IF;
            -- Closed or merged since it was found: no original, as when written alone (cg_original_for).
            v_best := NULL;
        END IF;
        IF v_orig[i] IS NULL AND v_best IS NOT NULL THEN
            v_orig[i] := v_cid[v_best]; v_ostate[i] := 'collected'; v_ono[i] := v_no[v_best]; v_oin[i] := v_best;
        END IF;
        v_result[i] := (e->'result') || jsonb_build_object('id', v_rid[i],
            'case', jsonb_build_object('id', v_cid[i], 'case_no', v_no[i],
                                       'state', CASE WHEN v_orig[i] IS NULL THEN 'collected' ELSE 'merged' END,
                                       'merged_into', v_orig[i], 'merged_into_no', v_ono[i]));
    END LOOP;

    -- Claim the keys, each report row written once, complete with its answer. A concurrent retry
    -- of a key waits here for the first one. (field_report.case_id is checked at commit.)
    WITH ins AS (
        INSERT INTO field_report (id, city_id, user_id, idempotency_key, request_hash, case_id, category_code,
            description, device_time, received_at, input_lon, input_lat, input_crs, accuracy_m, accuracy_gate_m,
            accuracy_ok, location_source, device_location, location, exif_distance_m, cell_id, cell_code, asset_id,
            asset_code, asset_distance_m, flags, response)
        SELECT v_rid[k], (rr->>'city_id')::integer, v_user[k], rr->>'idempotency_key', rr->>'request_hash', v_cid[k],
            rr->>'category_code', rr->>'description', (rr->>'device_time')::timestamptz,
            (rr->>'received_at')::timestamptz, (rr->>'input_lon')::float8, (rr->>'input_lat')::float8,
            rr->>'input_crs', (rr->>'accuracy_m')::float8, (rr->>'accuracy_gate_m')::float8,
            (rr->>'accuracy_ok')::boolean, rr->>'location_source',
            ST_SetSRID(ST_MakePoint((rr->>'dx')::float8, (rr->>'dy')::float8), (cc->>'srid')::integer),
            ST_SetSRID(ST_MakePoint(v_x[k], v_y[k]), (cc->>'srid')::integer),
            (rr->>'exif_distance_m')::float8, (rr->>'cell_id')::bigint, rr->>'cell_code', (rr->>'asset_id')::bigint,
            rr->>'asset_code', (rr->>'asset_distance_m')::float8,
            ARRAY(SELECT jsonb_array_elements_text(rr->'flags')), v_result[k]
        FROM (SELECT k, v_e[k]->'p'->'report' AS rr, v_e[k]->'p'->'case' AS cc
              FROM generate_subscripts(v_new, 1) k WHERE v_new[k]) s
        ON CONFLICT (user_id, idempotency_key) DO NOTHING
        RETURNING id)
    SELECT coalesce(array_agg(id), '{}') INTO v_claimed FROM ins;

    IF cardinality(v_claimed) < (SELECT count(*) FROM unnest(v_new) b WHERE b) THEN
        -- A concurrent transaction claimed some key first (it committed after this batch read the
        -- keys): that report is a retry, answered with the first result, unless one of this batch's
        -- reports was to be merged into it.
        FOR i IN 1..n LOOP
            CONTINUE WHEN NOT v_new[i] OR v_rid[i] = ANY(v_claimed);
            FOR j IN 1..n LOOP
                IF v_oin[j] = i THEN
                    RAISE EXCEPTION 'a report of this batch was claimed concurrently: write it report by report'
                        USING ERRCODE = '40001';
                END IF;
            END LOOP;
            v_new[i] := false;
            r := v_e[i]->'p'->'report';
            SELECT request_hash, response INTO v_prev FROM field_report
            WHERE user_id = v_user[i] AND idempotency_key = r->>'idempotency_key';
            FOR j IN 1..n LOOP  -- this report, and its retries in this batch (answered with it above)
                CONTINUE WHEN j <> i AND v_again[j] <> i;
                v_answer[j] := CASE WHEN v_prev.request_hash = v_e[j]->'p'->'report'->>'request_hash'
                                    THEN jsonb_build_object('status', 200, 'result', v_prev.response)
                                    ELSE jsonb_build_object('status', 409, 'message', format(
                    'Idempotency-Key ''%s'' was used already for a different report: use a new key',
                    r->>'idempotency_key')) END;
            END LOOP;
        END LOOP;
    END IF;

    -- The cases (duplicates written merged from the start: never in the rollup), in one statement.
    INSERT INTO case_file (id, city_id, case_no, source, channel, source_ref, received_at, category_code, category_name,
        request_type, urgency, title, description, address, location, location_source, location_accuracy_m,
        location_confidence, cell_id, cell_code, area_code, asset_id, state, merged_into, step_deadline_at,
        close_deadline_at, query_code_hash, updated_at)
    SELECT v_cid[k], (cc->>'city_id')::integer, v_no[k], cc->>'source', cc->>'channel', 'field-report-' || v_rid[k],
        v_at[k], cc->>'category_code', cc->>'category_name', cc->>'request_type', cc->>'urgency', cc->>'title',
        cc->>'description', cc->>'address', loc,
        CASE WHEN loc IS NULL THEN NULL ELSE cc->>'location_source' END, (cc->>'location_accuracy_m')::float8,
        (cc->>'location_confidence')::float8, (cc->>'cell_id')::bigint, cc->>'cell_code', cc->>'area_code',
        (cc->>'asset_id')::bigint, CASE WHEN v_orig[k] IS NULL THEN 'collected' ELSE 'merged' END, v_orig[k],
        CASE WHEN v_orig[k] IS NULL THEN (cc->>'step_deadline_at')::timestamptz END,
        (cc->>'close_deadline_at')::timestamptz,
        encode(sha256(convert_to(v_no[k] || ':' || (cc->>'query_code'), 'UTF8')), 'hex'), v_at[k]
    FROM (SELECT k, cc, CASE WHEN cc->>'x' IS NOT NULL THEN
                 ST_SetSRID(ST_MakePoint((cc->>'x')::float8, (cc->>'y')::float8), (cc->>'srid')::integer) END AS loc
          FROM (SELECT k, v_e[k]->'p'->'case' AS cc FROM generate_subscripts(v_new, 1) k WHERE v_new[k]) s0) s
    ORDER BY k;

    -- Their events: 'received' for each, and for a duplicate the two events of a merge by hand
    -- (cg_link_duplicate): on the duplicate, and on its original.
    INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, note, data)
    SELECT ev.case_id, ev.at, ev.kind, ev.actor_id, ev.actor_role, ev.from_state, ev.to_state, ev.note, ev.data
    FROM (SELECT k, 0 AS o, v_cid[k] AS case_id, v_at[k] AS at, 'received' AS kind, v_user[k] AS actor_id,
                 v_role[k] AS actor_role, NULL::text AS from_state, 'collected' AS to_state, NULL::text AS note,
                 v_e[k]->'p'->'case'->'event_data' AS data
          FROM generate_subscripts(v_new, 1) k WHERE v_new[k]
          UNION ALL
          SELECT k, 1, v_cid[k], v_at[k], 'merged', v_user[k], v_role[k], 'collected', 'merged',
                 v_e[k]->'p'->'case'->'dup'->>'note', jsonb_build_object('merged_into', v_orig[k], 'merged_into_no', v_ono[k])
          FROM generate_subscripts(v_new, 1) k WHERE v_new[k] AND v_orig[k] IS NOT NULL
          UNION ALL
          SELECT k, 2, v_orig[k], v_at[k], 'merged', v_user[k], v_role[k], v_ostate[k], v_ostate[k],
                 v_e[k]->'p'->'case'->'dup'->>'note', jsonb_build_object('duplicate', v_cid[k], 'duplicate_no', v_no[k])
          FROM generate_subscripts(v_new, 1) k WHERE v_new[k] AND v_orig[k] IS NOT NULL) ev
    ORDER BY ev.k, ev.o;

    FOR i IN 1..n LOOP
        IF v_new[i] THEN
            v_answer[i] := jsonb_build_object('status', 201, 'result', v_result[i]);
        END IF;
    END LOOP;
    RETURN to_jsonb(v_answer);
END $$"""

#: Rows keyed per statement.
WRAP_BATCH = 10_000


def _wrap_legacy_codes(conn) -> int:
    """Key every stored query code (scheme 1); returns how many. The key is read only when there is
    something to key (a database without codes never needs it here)."""
    ids = conn.execute(sa.text("SELECT count(*) FROM case_file WHERE query_code_hash IS NOT NULL")).scalar_one()
    if not ids:
        return 0
    from citygrid.secretkey import server_key

    key = server_key()
    done, last = 0, 0
    while True:
        rows = conn.execute(sa.text("""SELECT id, query_code_hash FROM case_file
                                       WHERE query_code_hash IS NOT NULL AND id > :last ORDER BY id LIMIT :n"""),
                            {"last": last, "n": WRAP_BATCH}).all()
        if not rows:
            return done
        conn.execute(sa.text("""
            UPDATE case_file c SET query_code_hash = w.h, query_code_scheme = 1
            FROM unnest(CAST(:ids AS bigint[]), CAST(:hs AS text[])) AS w(id, h) WHERE c.id = w.id"""),
            {"ids": [r[0] for r in rows],
             "hs": [hmac.new(key, b"query-code-v1:" + r[1].strip().encode(), hashlib.sha256).hexdigest()
                    for r in rows]})
        done += len(rows)
        last = rows[-1][0]


def upgrade() -> None:
    from citygrid import settings

    op.execute("""ALTER TABLE app_user ADD COLUMN token_issued_at timestamptz, ADD COLUMN token_expires_at timestamptz,
                  ADD COLUMN token_revoked_at timestamptz, ADD COLUMN last_used_at timestamptz""")
    op.get_bind().execute(sa.text("""UPDATE app_user SET token_issued_at = created_at,
                                     token_expires_at = now() + make_interval(days => :d)"""),
                          {"d": settings.auth().token_days})
    op.execute("""ALTER TABLE app_user ALTER COLUMN token_issued_at SET NOT NULL,
                  ALTER COLUMN token_issued_at SET DEFAULT now(), ALTER COLUMN token_expires_at SET NOT NULL,
                  ADD CONSTRAINT app_user_token_dates CHECK (token_expires_at > token_issued_at)""")
    op.execute(FILE_REPORTS)

    # Existing rows are scheme 1 (a constant default: no table rewrite), new rows scheme 2.
    op.execute("ALTER TABLE case_file ADD COLUMN query_code_scheme smallint NOT NULL DEFAULT 1 "
               "CHECK (query_code_scheme IN (1, 2))")
    op.execute("ALTER TABLE case_file ALTER COLUMN query_code_scheme SET DEFAULT 2")
    _wrap_legacy_codes(op.get_bind())


def downgrade() -> None:
    # The keyed codes cannot be turned back into sha256 of the code (not known): they stay keyed, and
    # are no longer verifiable by the code of before this revision.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0012_case_write_functions.py")
    spec = importlib.util.spec_from_file_location("citygrid_migration_0012", path)
    m12 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m12)
    op.execute(m12.FILE_REPORTS)
    op.execute("ALTER TABLE case_file DROP COLUMN IF EXISTS query_code_scheme")
    op.execute("""ALTER TABLE app_user DROP CONSTRAINT IF EXISTS app_user_token_dates,
                  DROP COLUMN IF EXISTS token_issued_at, DROP COLUMN IF EXISTS token_expires_at,
                  DROP COLUMN IF EXISTS token_revoked_at, DROP COLUMN IF EXISTS last_used_at""")
