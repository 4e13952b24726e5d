"""The case write path as database functions: one implementation of opening a case (number, case
file, contact, 'received' event, 并单), of the duplicate rule and of filing an inspector report
(idempotency claim + case + stored response), called by the synchronous Python path (SQLAlchemy)
and by the asynchronous intake (asyncpg) alike — one round trip per report instead of eleven.

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

# PL/pgSQL, not SQL: a SQL function that is not inlined is planned again at every call (0.8 ms for
# this one, 20 times its execution); PL/pgSQL keeps the plan for the session. The plan it keeps is
# generic: left to itself it ANDs the GiST index with the (city, class, received) index, and during a
# burst of one class that second scan reads every case of the burst (0.5 ms at 20,000 cases in 72 h).
# Space is the selective condition: the cases within the radius come from the GiST index alone
# (OFFSET 0 keeps the other conditions out of that scan) and the rest is a filter on those few.
FIND_DUPLICATE = """
CREATE OR REPLACE FUNCTION cg_find_duplicate(p_city integer, p_category text, p_loc geometry, p_at timestamptz,
                                             p_radius double precision, p_window_h double precision,
                                             p_open text[], p_exclude bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- The open case a new one duplicates: same class, within the radius, received in the window
    -- before p_at; the nearest, then the earliest wins; merged cases are never originals.
    RETURN (SELECT id FROM (SELECT id, city_id, category_code, merged_into, state, received_at, location
                            FROM case_file
                            WHERE location IS NOT NULL AND ST_DWithin(location, p_loc, p_radius)
                            OFFSET 0) near
            WHERE city_id = p_city AND category_code = p_category AND merged_into IS NULL
              AND state = ANY(p_open)
              AND received_at BETWEEN p_at - make_interval(secs => p_window_h * 3600) AND p_at
              AND (p_exclude IS NULL OR id <> p_exclude)
            ORDER BY ST_Distance(location, p_loc), received_at, id
            LIMIT 1);
END $$"""

ORIGINAL_FOR = """
CREATE OR REPLACE FUNCTION cg_original_for(p_city integer, p_category text, p_loc geometry, p_at timestamptz,
                                           p_radius double precision, p_window_h double precision, p_open text[],
                                           OUT id bigint, OUT state text, OUT case_no text)
LANGUAGE plpgsql AS $$
DECLARE v_id bigint := cg_find_duplicate(p_city, p_category, p_loc, p_at, p_radius, p_window_h, p_open, NULL);
BEGIN
    -- The original a new case is merged into (cg_find_duplicate), share-locked and checked again:
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

FILE_REPORT = """
CREATE OR REPLACE FUNCTION cg_file_report(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- An inspector's report: p.report (the field_report columns), p.case (cg_open_case's input without
-- source_ref and actor), p.result (the answer without its ids), p.user_id / p.user_role, and the grid
-- the point was snapped with (p.grid_id, p.grid_version).
-- Returns {"status": 201|200|409|410, "result": ..., "message": ...}:
--   201 recorded; 200 a retry of the same key (the first result); 409 the key was used for a
--   different report; 410 the grid changed since it was loaded (snap again and retry).
-- The ids, the case number and the original (并单, share-locked) are taken before the key is
-- claimed, so that the report row is written once, complete with its answer (a claim that loses
-- leaves gaps in the sequences, as a rolled-back intake does).
DECLARE
    r jsonb := p->'report';
    c jsonb := p->'case';
    v_user integer := (p->>'user_id')::integer;
    v_srid integer := (c->>'srid')::integer;
    v_loc geometry := ST_SetSRID(ST_MakePoint((r->>'x')::float8, (r->>'y')::float8), v_srid);
    v_id bigint := nextval('field_report_id_seq');
    v_case_id bigint := nextval('case_file_id_seq');
    v_no text := cg_case_no(c->>'case_no_prefix');
    v_orig bigint;
    v_orig_state text;
    v_orig_no text;
    v_prev record;
    v_claimed bigint;
    v_result jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM grid WHERE id = (p->>'grid_id')::integer AND city_id = (r->>'city_id')::integer
                   AND active AND created_at::text = p->>'grid_version') THEN
        RETURN jsonb_build_object('status', 410, 'message', 'the city''s grid changed: snap again');
    END IF;
    SELECT * INTO v_orig, v_orig_state, v_orig_no
    FROM cg_original_for((c->>'city_id')::integer, c->>'category_code', v_loc, (c->>'received_at')::timestamptz,
                         (c->'dup'->>'radius_m')::float8, (c->'dup'->>'window_h')::float8,
                         ARRAY(SELECT jsonb_array_elements_text(c->'dup'->'open')));
    v_result := (p->'result') || jsonb_build_object('id', v_id,
        'case', jsonb_build_object('id', v_case_id, 'case_no', v_no,
                                   'state', CASE WHEN v_orig IS NULL THEN 'collected' ELSE 'merged' END,
                                   'merged_into', v_orig, 'merged_into_no', v_orig_no));
    -- Claim the key: the unique (user, key) makes a concurrent retry wait here for the first one.
    -- (field_report.case_id is checked at commit: the case is written just below.)
    INSERT INTO field_report (id, city_id, user_id, idempotency_key, request_hash, case_id, category_code,
        description, device_time, received_at, input_lon, input_lat, input_crs, accuracy_m, accuracy_gate_m,
        accuracy_ok, location_source, device_location, location, exif_distance_m, cell_id, cell_code, asset_id,
        asset_code, asset_distance_m, flags, response)
    VALUES (v_id, (r->>'city_id')::integer, v_user, r->>'idempotency_key', r->>'request_hash', v_case_id,
        r->>'category_code', r->>'description', (r->>'device_time')::timestamptz, (r->>'received_at')::timestamptz,
        (r->>'input_lon')::float8, (r->>'input_lat')::float8, r->>'input_crs', (r->>'accuracy_m')::float8,
        (r->>'accuracy_gate_m')::float8, (r->>'accuracy_ok')::boolean, r->>'location_source',
        ST_SetSRID(ST_MakePoint((r->>'dx')::float8, (r->>'dy')::float8), v_srid), v_loc,
        (r->>'exif_distance_m')::float8, (r->>'cell_id')::bigint, r->>'cell_code', (r->>'asset_id')::bigint,
        r->>'asset_code', (r->>'asset_distance_m')::float8,
        ARRAY(SELECT jsonb_array_elements_text(r->'flags')), v_result)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id INTO v_claimed;
    IF v_claimed IS NULL THEN
        SELECT request_hash, response INTO v_prev FROM field_report
        WHERE user_id = v_user AND idempotency_key = r->>'idempotency_key';
        IF v_prev.request_hash <> r->>'request_hash' THEN
            RETURN jsonb_build_object('status', 409, 'message',
                format('Idempotency-Key ''%s'' was used already for a different report: use a new key',
                       r->>'idempotency_key'));
        END IF;
        RETURN jsonb_build_object('status', 200, 'result', v_prev.response);
    END IF;
    PERFORM cg_open_case(c || jsonb_build_object('id', v_case_id, 'case_no', v_no, 'original', v_orig,
                                                 'original_state', v_orig_state, 'original_no', v_orig_no,
                                                 'source_ref', 'field-report-' || v_id,
                                                 'actor_id', v_user, 'actor_role', p->>'user_role'));
    RETURN jsonb_build_object('status', 201, 'result', v_result);
END $$"""

FILE_REPORT_AS = """
CREATE OR REPLACE FUNCTION cg_file_report_as(p_token_hash text, p_roles text[], p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
-- cg_file_report for the holder of a bearer token (by its sha256): 401 unknown or revoked token,
-- 403 a role not in p_roles (with the role), else cg_file_report's answer.
DECLARE u record;
BEGIN
    SELECT id, role INTO u FROM app_user WHERE token_hash = p_token_hash AND active;
    IF NOT FOUND THEN RETURN jsonb_build_object('status', 401); END IF;
    IF NOT (u.role = ANY(p_roles)) THEN RETURN jsonb_build_object('status', 403, 'role', u.role); END IF;
    RETURN cg_file_report(p || jsonb_build_object('user_id', u.id, 'user_role', u.role));
END $$"""

FILE_REPORTS_AS = """
CREATE OR REPLACE FUNCTION cg_file_reports_as(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
-- Several reports in one transaction (the intake's group commit): p is an array of
-- {token_hash, roles, p}; the answer is the array of cg_file_report_as's answers, in order.
DECLARE e jsonb; answers jsonb := '[]'::jsonb;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p) WITH ORDINALITY ORDER BY ordinality LOOP
        answers := answers || jsonb_build_array(cg_file_report_as(e->>'token_hash',
            ARRAY(SELECT jsonb_array_elements_text(e->'roles')), e->'p'));
    END LOOP;
    RETURN answers;
END $$"""

FUNCTIONS = (CASE_NO, FIND_DUPLICATE, ORIGINAL_FOR, LINK_DUPLICATE, OPEN_CASE, FILE_REPORT, FILE_REPORT_AS, FILE_REPORTS_AS)


def upgrade() -> None:
    # A report is written complete, with its case's id, before that case: the reference is checked
    # at commit.
    op.execute("ALTER TABLE field_report ALTER CONSTRAINT field_report_case_id_fkey DEFERRABLE INITIALLY DEFERRED")
    for sql in FUNCTIONS:
        op.execute(sql)


def downgrade() -> None:
    op.execute("ALTER TABLE field_report ALTER CONSTRAINT field_report_case_id_fkey NOT DEFERRABLE")
    for name in ("cg_file_reports_as(jsonb)", "cg_file_report_as(text, text[], jsonb)", "cg_file_report(jsonb)", "cg_open_case(jsonb)",
                 "cg_link_duplicate(bigint, bigint, integer, text, timestamptz, text, text[], text[])",
                 "cg_original_for(integer, text, geometry, timestamptz, double precision, double precision, text[])",
                 "cg_find_duplicate(integer, text, geometry, timestamptz, double precision, double precision, "
                 "text[], bigint)", "cg_case_no(text)"):
        op.execute(f"DROP FUNCTION IF EXISTS {name}")
