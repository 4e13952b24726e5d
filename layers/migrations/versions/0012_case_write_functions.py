"""The case write path as database functions: one implementation of opening a case (number, case
file, contact, 'received' event, 并单), of the duplicate rule and of filing an inspector report
(idempotency claim + case + stored response), called by the synchronous Python path (SQLAlchemy)
and by the asynchronous intake (asyncpg) alike — one round trip per report instead of eleven.

Reports are filed set-based: ``cg_file_reports`` takes a batch (the intake's group commit). One
statement checks every token, grid and earlier key; a loop in memory decides, report by report and
in order, the ids, the case numbers and the original of each duplicate (并单), among the open cases
(cg_nearest_open) and the batch's own earlier reports; then field_report, case_file and case_event
get one INSERT each, so the rollup's statement trigger fires once per batch. A report is answered
what writing the reports one by one, in the batch's order, gives (tests/field/test_report_writer.py
compares the two). cg_file_report (the synchronous path) and cg_file_report_as (a report alone) are
this function on a batch of one: there is one implementation of filing a report. A batch whose key
claim was lost to a concurrent transaction, where another report of the same batch was to be merged
into the loser, is refused as a whole (SQLSTATE 40001); the intake then writes that batch report by
report (layers/intake.py).

Python still decides everything that is configuration or arithmetic (validation, CRS, snapping,
deadlines on the working-time calendar, the duplicate radius and window of the class): the
functions take those values and only write.

Errors that the caller must turn into 4xx answers are returned, not raised, so that nothing is
written and the caller's transaction stays usable: ``{"error": 409, "message": ...}``.

Revision ID: 0012
Revises: 0004 (field work), needs 0008 (case_no_seq)
"""

from alembic import op

revision = "0012"
down_revision = "0004"
branch_labels = None
depends_on = ("0008",)


CASE_NO = """
CREATE OR REPLACE FUNCTION cg_case_no(prefix text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- <adcode><yyyymmdd> || an 8-digit serial from the sequence: locks nothing, never repeats.
    RETURN prefix || lpad(((nextval('case_no_seq') - 1) % 100000000 + 1)::text, 8, '0');
END $$"""

# The duplicate rule (并单) in one place. PL/pgSQL, not SQL: a SQL function that is not inlined is
# planned again at every call (0.8 ms for this one, 20 times its execution); PL/pgSQL keeps the plan
# for the session, and keeps the generic one (plan_cache_mode): once the table has statistics the plan
# cache would otherwise plan the query again at every call to compare (0.1 ms of the 0.45 ms a report
# cost with 240,000 cases in the city). Left to itself the generic plan ANDs the GiST index with the
# (city, class, received) index, and during a burst of one class that second scan reads every case of
# the burst (0.5 ms at 20,000 cases in 72 h). Space is the selective condition: the cases within the
# radius come from the GiST index alone (OFFSET 0 keeps the other conditions out of that scan) and the
# rest is a filter on those few.
NEAREST_OPEN = """
CREATE OR REPLACE FUNCTION cg_nearest_open(p_city integer, p_category text, p_loc geometry, p_at timestamptz,
                                           p_radius double precision, p_window_h double precision,
                                           p_open text[], p_exclude bigint,
                                           OUT id bigint, OUT dist double precision, OUT received_at timestamptz)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- The duplicate rule (并单): the open case of the same class within the radius, received in the
    -- window before p_at; the nearest, then the earliest wins; merged cases are never originals.
    -- Space is the selective condition: the GiST index alone finds the cases within the radius
    -- (OFFSET 0 keeps the other conditions out of that scan), the rest filters those few.
    SELECT near.id, ST_Distance(near.location, p_loc), near.received_at INTO id, dist, received_at
    FROM (SELECT c.id, c.city_id, c.category_code, c.merged_into, c.state, c.received_at, c.location
          FROM case_file c
          WHERE c.location IS NOT NULL AND ST_DWithin(c.location, p_loc, p_radius)
          OFFSET 0) near
    WHERE near.city_id = p_city AND near.category_code = p_category AND near.merged_into IS NULL
      AND near.state = ANY(p_open)
      AND near.received_at BETWEEN p_at - make_interval(secs => p_window_h * 3600) AND p_at
      AND (p_exclude IS NULL OR near.id <> p_exclude)
    ORDER BY ST_Distance(near.location, p_loc), near.received_at, near.id
    LIMIT 1;
END $$"""

FIND_DUPLICATE = """
CREATE OR REPLACE FUNCTION cg_find_duplicate(p_city integer, p_category text, p_loc geometry, p_at timestamptz,
                                             p_radius double precision, p_window_h double precision,
                                             p_open text[], p_exclude bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT d.id FROM cg_nearest_open(p_city, p_category, p_loc, p_at, p_radius, p_window_h, p_open,
                                              p_exclude) d);
END $$"""

ORIGINAL_FOR = """
CREATE OR REPLACE FUNCTION cg_original_for(p_city integer, p_category text, p_loc geometry, p_at timestamptz,
                                           p_radius double precision, p_window_h double precision, p_open text[],
                                           OUT id bigint, OUT state text, OUT case_no text)
LANGUAGE plpgsql AS $$
DECLARE v_id bigint := (SELECT d.id FROM cg_nearest_open(p_city, p_category, p_loc, p_at, p_radius, p_window_h,
                                                          p_open, NULL) d);
BEGIN
    -- The original a new case is merged into (cg_nearest_open), share-locked and checked again:
    -- until commit it can be neither closed nor merged, and other duplicates of it do not wait.
    -- (The id is found first: as a condition of this query the function would be called per row.)
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    SELECT c.id, c.state, c.case_no INTO id, state, case_no FROM case_file c
    WHERE c.id = v_id AND c.merged_into IS NULL AND c.state = ANY(p_open)
    FOR SHARE;
END $$"""

LINK_DUPLICATE = """
CREATE OR REPLACE FUNCTION cg_link_duplicate(p_case bigint, p_original bigint, p_actor integer, p_role text,
                                             p_at timestamptz, p_note text, p_final text[], p_open text[])
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE d record; o record;
BEGIN
    IF p_case = p_original THEN
        RETURN jsonb_build_object('error', 422, 'message', 'a case cannot be merged into itself');
    END IF;
    -- Lock both in id order (no deadlock between two merges of the same pair).
    PERFORM 1 FROM case_file WHERE id IN (p_case, p_original) ORDER BY id FOR UPDATE;
    SELECT id, state, merged_into, city_id, case_no INTO d FROM case_file WHERE id = p_case;
    IF NOT FOUND THEN RETURN jsonb_build_object('error', 404, 'message', format('no case %s', p_case)); END IF;
    SELECT id, state, merged_into, city_id, case_no INTO o FROM case_file WHERE id = p_original;
    IF NOT FOUND THEN RETURN jsonb_build_object('error', 404, 'message', format('no case %s', p_original)); END IF;
    IF d.city_id <> o.city_id THEN
        RETURN jsonb_build_object('error', 422, 'message', 'cases of different cities cannot be merged');
    END IF;
    IF d.state = ANY(p_final) THEN
        RETURN jsonb_build_object('error', 409, 'message', format('case %s is %s: it cannot be merged', d.case_no, d.state));
    END IF;
    IF NOT (o.state = ANY(p_open)) OR o.merged_into IS NOT NULL THEN
        RETURN jsonb_build_object('error', 409, 'message', format('case %s is %s: merge into an open case', o.case_no, o.state));
    END IF;
    UPDATE case_file SET merged_into = p_original, state = 'merged', step_deadline_at = NULL, updated_at = p_at
    WHERE id = p_case;
    INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, note, data)
    VALUES (p_case, p_at, 'merged', p_actor, p_role, d.state, 'merged', p_note,
            jsonb_build_object('merged_into', p_original, 'merged_into_no', o.case_no)),
           (p_original, p_at, 'merged', p_actor, p_role, o.state, o.state, p_note,
            jsonb_build_object('duplicate', p_case, 'duplicate_no', d.case_no));
    RETURN jsonb_build_object('merged_into', p_original, 'merged_into_no', o.case_no);
END $$"""

OPEN_CASE = """
CREATE OR REPLACE FUNCTION cg_open_case(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- p: city_id, srid, case_no_prefix, source, channel, source_ref, received_at, category_code,
--    category_name, request_type, urgency, title, description, address, x, y (working CRS, or null),
--    location_source, location_accuracy_m, location_confidence, cell_id, cell_code, area_code, asset_id,
--    step_deadline_at, close_deadline_at, query_code (hashed here), contact {name, phone, openid},
--    actor_id, actor_role, event_data, dup {radius_m, window_h, open[], note};
--    and, when the caller took them already (cg_file_report): id, case_no, original (null: none)
--    with original_state and original_no.
-- A duplicate (并单) is written merged from the start: it never enters the rollup, and the original
-- is only share-locked, so that many duplicates of one original do not wait for each other.
DECLARE
    v_city integer := (p->>'city_id')::integer;
    v_at timestamptz := (p->>'received_at')::timestamptz;
    v_open text[] := ARRAY(SELECT jsonb_array_elements_text(p->'dup'->'open'));
    v_loc geometry;
    v_no text;
    v_id bigint;
    v_hit text;
    v_orig bigint;
    v_orig_state text;
    v_orig_no text;
BEGIN
    IF p->>'source_ref' IS NOT NULL THEN
        SELECT case_no INTO v_hit FROM case_file
        WHERE city_id = v_city AND source = p->>'source' AND source_ref = p->>'source_ref';
        IF FOUND THEN
            RETURN jsonb_build_object('error', 409, 'message',
                format('%s case ''%s'' is recorded already as %s', p->>'source', p->>'source_ref', v_hit));
        END IF;
    END IF;
    IF p->>'x' IS NOT NULL THEN
        v_loc := ST_SetSRID(ST_MakePoint((p->>'x')::float8, (p->>'y')::float8), (p->>'srid')::integer);
    END IF;
    IF p ? 'original' THEN  -- found and share-locked by the caller (cg_file_report)
        v_orig := (p->>'original')::bigint;
        v_orig_state := p->>'original_state';
        v_orig_no := p->>'original_no';
    ELSIF v_loc IS NOT NULL THEN
        SELECT * INTO v_orig, v_orig_state, v_orig_no
        FROM cg_original_for(v_city, p->>'category_code', v_loc, v_at, (p->'dup'->>'radius_m')::float8,
                             (p->'dup'->>'window_h')::float8, v_open);
    END IF;
    v_id := coalesce((p->>'id')::bigint, nextval('case_file_id_seq'));
    v_no := coalesce(p->>'case_no', cg_case_no(p->>'case_no_prefix'));
    INSERT INTO case_file (id, city_id, case_no, source, channel, source_ref, received_at, category_code, category_name,
        request_type, urgency, title, description, address, location, location_source, location_accuracy_m,
        location_confidence, cell_id, cell_code, area_code, asset_id, state, merged_into, step_deadline_at,
        close_deadline_at, query_code_hash, updated_at)
    VALUES (v_id, v_city, v_no, p->>'source', p->>'channel', p->>'source_ref', v_at, p->>'category_code',
        p->>'category_name', p->>'request_type', p->>'urgency', p->>'title', p->>'description', p->>'address', v_loc,
        CASE WHEN v_loc IS NULL THEN NULL ELSE p->>'location_source' END, (p->>'location_accuracy_m')::float8,
        (p->>'location_confidence')::float8, (p->>'cell_id')::bigint, p->>'cell_code', p->>'area_code',
        (p->>'asset_id')::bigint, CASE WHEN v_orig IS NULL THEN 'collected' ELSE 'merged' END, v_orig,
        CASE WHEN v_orig IS NULL THEN (p->>'step_deadline_at')::timestamptz END,
        (p->>'close_deadline_at')::timestamptz, encode(sha256(convert_to(v_no || ':' || (p->>'query_code'), 'UTF8')), 'hex'),
        v_at);
    IF coalesce(p->'contact'->>'name', p->'contact'->>'phone', p->'contact'->>'openid') IS NOT NULL THEN
        INSERT INTO case_contact (case_id, name, phone, openid)
        VALUES (v_id, p->'contact'->>'name', p->'contact'->>'phone', p->'contact'->>'openid');
    END IF;
    INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, data)
    VALUES (v_id, v_at, 'received', (p->>'actor_id')::integer, p->>'actor_role', NULL, 'collected', p->'event_data');
    IF v_orig IS NOT NULL THEN  -- 并单: the same two events as a merge by hand (cg_link_duplicate)
        INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, note, data)
        VALUES (v_id, v_at, 'merged', (p->>'actor_id')::integer, p->>'actor_role', 'collected', 'merged',
                p->'dup'->>'note', jsonb_build_object('merged_into', v_orig, 'merged_into_no', v_orig_no)),
               (v_orig, v_at, 'merged', (p->>'actor_id')::integer, p->>'actor_role', v_orig_state, v_orig_state,
                p->'dup'->>'note', jsonb_build_object('duplicate', v_id, 'duplicate_no', v_no));
    END IF;
    RETURN jsonb_build_object('id', v_id, 'case_no', v_no,
                              'state', CASE WHEN v_orig IS NULL THEN 'collected' ELSE 'merged' END,
                              'merged_into', v_orig, 'merged_into_no', v_orig_no);
END $$"""

FILE_REPORTS = r"""
CREATE OR REPLACE FUNCTION cg_file_reports(p jsonb) RETURNS jsonb LANGUAGE plpgsql
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
--   {"status": 401} / {"status": 403, "role": ...}  the token is unknown / its role is not allowed.
DECLARE
    n integer := jsonb_array_length(p);
    v_user integer[]; v_role text[]; v_known boolean[]; v_allowed boolean[]; v_grid_ok boolean[];
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
    -- Every token, grid and earlier use of the key, in one statement.
    SELECT array_agg(t.e ORDER BY t.ord),
           array_agg(coalesce((t.e->>'user_id')::integer, u.id) ORDER BY t.ord),
           array_agg(coalesce(t.e->>'user_role', u.role) ORDER BY t.ord),
           array_agg(t.e ? 'user_id' OR u.id IS NOT NULL ORDER BY t.ord),
           array_agg(t.e ? 'user_id' OR u.role IN (SELECT jsonb_array_elements_text(t.e->'roles')) ORDER BY t.ord),
           array_agg(EXISTS (SELECT 1 FROM grid g WHERE g.id = (t.e->'p'->>'grid_id')::integer
                                  AND g.city_id = (t.e->'p'->'report'->>'city_id')::integer AND g.active
                                  AND g.created_at::text = t.e->'p'->>'grid_version') ORDER BY t.ord),
           array_agg(prev.request_hash ORDER BY t.ord), array_agg(prev.response ORDER BY t.ord)
    INTO v_e, v_user, v_role, v_known, v_allowed, v_grid_ok, v_prev_hash, v_prev_resp
    FROM jsonb_array_elements(p) WITH ORDINALITY t(e, ord)
    LEFT JOIN app_user u ON NOT (t.e ? 'user_id') AND u.token_hash = t.e->>'token_hash' AND u.active
    LEFT JOIN field_report prev
           ON prev.user_id = coalesce((t.e->>'user_id')::integer, u.id)
          AND prev.idempotency_key = t.e->'p'->'report'->>'idempotency_key';

    -- Report by report, in order, in memory: what each one is, its ids and its original.
    FOR i IN 1..n LOOP
        e := v_e[i]->'p'; r := e->'report'; c := e->'case';
        v_key := r->>'idempotency_key';
        IF NOT v_known[i] THEN
            v_answer[i] := jsonb_build_object('status', 401); CONTINUE;
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

FILE_REPORT = """
CREATE OR REPLACE FUNCTION cg_file_report(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- One report of a user the caller has checked (p.user_id, p.user_role): cg_file_reports of one.
BEGIN
    RETURN cg_file_reports(jsonb_build_array(jsonb_build_object(
        'user_id', p->'user_id', 'user_role', p->'user_role', 'p', p)))->0;
END $$"""

FILE_REPORT_AS = """
CREATE OR REPLACE FUNCTION cg_file_report_as(p_token_hash text, p_roles text[], p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
-- One report for the holder of a bearer token (by its sha256) if its role is in p_roles.
BEGIN
    RETURN cg_file_reports(jsonb_build_array(jsonb_build_object(
        'token_hash', p_token_hash, 'roles', to_jsonb(p_roles), 'p', p)))->0;
END $$"""

FILE_REPORTS_AS = """
CREATE OR REPLACE FUNCTION cg_file_reports_as(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- Several reports of bearer tokens in one transaction (the intake's group commit).
BEGIN
    RETURN cg_file_reports(p);
END $$"""

FUNCTIONS = (CASE_NO, NEAREST_OPEN, FIND_DUPLICATE, ORIGINAL_FOR, LINK_DUPLICATE, OPEN_CASE, FILE_REPORTS, FILE_REPORT,
             FILE_REPORT_AS, FILE_REPORTS_AS)


def upgrade() -> None:
    # A report is written complete, with its case's id, before that case: the reference is checked
    # at commit.
    op.execute("ALTER TABLE field_report ALTER CONSTRAINT field_report_case_id_fkey DEFERRABLE INITIALLY DEFERRED")
    for sql in FUNCTIONS:
        op.execute(sql)


def downgrade() -> None:
    op.execute("ALTER TABLE field_report ALTER CONSTRAINT field_report_case_id_fkey NOT DEFERRABLE")
    for name in ("cg_file_reports_as(jsonb)", "cg_file_reports(jsonb)", "cg_file_report_as(text, text[], jsonb)", "cg_file_report(jsonb)", "cg_open_case(jsonb)",
                 "cg_link_duplicate(bigint, bigint, integer, text, timestamptz, text, text[], text[])",
                 "cg_original_for(integer, text, geometry, timestamptz, double precision, double precision, text[])",
                 "cg_find_duplicate(integer, text, geometry, timestamptz, double precision, double precision, "
                 "text[], bigint)", "cg_nearest_open(integer, text, geometry, timestamptz, double precision, "
                 "double precision, text[], bigint)", "cg_case_no(text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {name}")
