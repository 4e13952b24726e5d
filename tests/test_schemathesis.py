"""Generated requests (schemathesis) against the running app, from its own OpenAPI document, as three
callers: no token, an admin, an inspector. No answer may be a 5xx, and every answer the document
describes must match its schema (the 422 body above all).

Bounded and deterministic: a few positive and a few negative examples per operation (derandomized
Hypothesis, no shrinking, no example database), against the live server on the shared test database.
The operations run as generated: what they may write (users, cases with a random text …) is what any
caller may write. Excluded: the admin's revoke/renew of a user's token, which would revoke the tokens
the rest of the session's tests use (tests/core/test_tokens.py tests them), and for the same reason
disabling, changing and re-passwording users (tests/api/test_admin_page.py). The counts are printed at the
end of the session."""

from __future__ import annotations

import collections
import os
import time

import pytest

from tests.conftest import auth

# per operation (each sent as every caller); CITYGRID_SCHEMATHESIS_EXAMPLES=N for a deeper run
EXAMPLES = dict.fromkeys(("positive", "negative"), int(os.environ.get("CITYGRID_SCHEMATHESIS_EXAMPLES", "3")))
IDENTITIES = ("anonymous", "admin", "inspector")
EXCLUDED = {("POST", "/api/v1/admin/users/{user_id}/revoke"), ("POST", "/api/v1/admin/users/{user_id}/token"),
            # as revoke: they would disable, demote or re-password the users the other tests sign in as
            # (tests/api/test_admin_page.py tests them)
            ("POST", "/api/v1/admin/users/{user_id}/disable"), ("POST", "/api/v1/admin/users/{user_id}/password"),
            ("PATCH", "/api/v1/admin/users/{user_id}")}
COUNTS: dict[str, collections.Counter] = {}


def _summary(terminal) -> None:
    if COUNTS and terminal is not None:
        total = sum(COUNTS.values(), collections.Counter())
        per_caller = "; ".join(f"{w}: {c['cases']} ({', '.join(f'{k} {c[k]}' for k in sorted(c) if k.endswith('xx'))})"
                               for w, c in COUNTS.items())
        terminal.write_line(
            f"schemathesis: {total['cases']} generated requests over {total['operations']} operations "
            f"({per_caller}), {total['5xx']} × 5xx, {total['nonconforming']} answers not matching the schema, "
            f"{total['seconds']:.0f} s")


@pytest.fixture(scope="module")
def st_schema(app):
    import schemathesis

    return schemathesis.openapi.from_dict(app.openapi())


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        _summary(request.config.pluginmanager.get_plugin("terminalreporter"))


def _send(case, mode, callers, base_url, session, failures) -> None:
    """One generated request, sent as each caller; 5xx and answers not as declared go to ``failures``."""
    from schemathesis.checks import response_schema_conformance
    from schemathesis.core.failures import FailureGroup

    for who, headers in callers.items():
        counts = COUNTS[who]
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
        counts["cases"] += 1
        counts[f"{response.status_code // 100}xx"] += 1
        where = f"{case.method} {case.formatted_path} ({who}, {mode.value}): {response.status_code}"
        if response.status_code >= 500:
            failures["5xx"].append(f"{where} {response.text[:200]}\n    {case.as_curl_command(headers)}")
            continue
        try:
            case.validate_response(response, checks=[response_schema_conformance], headers=headers)
        except FailureGroup as e:
            counts["nonconforming"] += 1
            failures["nonconforming"].append(f"{where} {str(e)[:400]}")


def _runner(operation, mode, known, callers, base_url, session, failures):
    """A Hypothesis test sending ``EXAMPLES[mode]`` generated requests of ``operation``. Positive
    requests name things that exist (``known``: the city, a small layer, a case) where the operation
    has such a parameter; random ones are mostly a 404 before anything else is read."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    fixed = {}
    if mode is GenerationMode.POSITIVE:
        for where in ("path_parameters", "query"):
            names = {p.name for p in getattr(operation, where)}
            fixed[where] = {k: v for k, v in known.items() if k in names} or None

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(max_examples=EXAMPLES[mode.value], derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        _send(case, mode, callers, base_url, session, failures)

    return run


@pytest.mark.slow
def test_generated_requests_never_fail_the_server(st_schema, live_server, tokens):
    """Each generated request is sent as each of the three callers (generation costs more than sending)."""
    import requests
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    callers = {who: {} if who == "anonymous" else auth(tokens[who]) for who in IDENTITIES}
    # a case of this test's own (workflow actions generated for it may go anywhere)
    r = requests.post(f"{live_server}/api/v1/cases", headers=auth(tokens["operator"]), timeout=60,
                      json={"category_code": "E10101", "description": "schemathesis", "location": {"x": 121.17, "y": 31.89}})
    assert r.status_code == 201, r.text
    known = {"city": "haimen", "name": "admin_areas", "case_id": r.json()["id"]}
    for who in IDENTITIES:
        COUNTS[who] = collections.Counter()
    failures: dict[str, list[str]] = {"5xx": [], "nonconforming": []}
    session = requests.Session()
    started = time.monotonic()
    operations = 0
    for result in st_schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = _runner(operation, mode, known, callers, live_server, session, failures)
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                pass
    COUNTS["anonymous"]["operations"] = operations
    COUNTS["anonymous"]["seconds"] = time.monotonic() - started
    cases = sum(c["cases"] for c in COUNTS.values())
    assert operations >= 50 and cases >= len(IDENTITIES) * operations * EXAMPLES["positive"]
    assert not failures["5xx"], f"{len(failures['5xx'])} × 5xx:\n" + "\n".join(failures["5xx"][:20])
    assert not failures["nonconforming"], (f"{len(failures['nonconforming'])} answers not as declared:\n"
                                           + "\n".join(failures["nonconforming"][:20]))
