"""Validation before PostgreSQL: control characters and lone surrogates refused in every kind of input
(query and path parameters, JSON fields, forms, the Open311 form, the fast intake), integers bounded
to 64 bits, paging capped; each a 422 naming the field, with the body the OpenAPI document declares."""

from __future__ import annotations

import jsonschema
import pytest
from fastapi.routing import APIRoute

from api.validation import INT64_MAX, MAX_OFFSET
from tests.conftest import auth, count


def refused(r, *loc: str | int) -> dict:
    """Assert a 422 whose first error is at ``loc`` and whose words name the field."""
    assert r.status_code == 422, f"{r.status_code} {r.text[:300]}"
    body = r.json()
    assert isinstance(body["detail"], str)
    assert body["errors"][0]["loc"][:len(loc)] == list(loc), body
    name = str(loc[-1])
    assert name in body["detail"], body
    return body


def cases_written(engine) -> int:
    return count(engine, "SELECT count(*) FROM case_file")


@pytest.fixture(scope="module")
def schema(app) -> dict:
    return app.openapi()


def conforms(schema: dict, body: dict) -> None:
    """``body`` is valid against the 422 schema the OpenAPI document declares."""
    declared = schema["components"]["schemas"]["HTTPValidationError"]
    jsonschema.Draft202012Validator({**declared, "components": schema["components"]}).validate(body)


# --- control characters ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["%00", "a%01b", "%7F", "x%0Ay"])
def test_control_character_in_a_query_parameter(client, schema, value):
    body = refused(client.get(f"/api/v1/public/notices?city={value}"), "query", "city")
    assert "control character" in body["detail"]
    conforms(schema, body)


def test_control_character_in_a_query_parameter_name_and_of_the_fast_paths(client, tokens):
    refused(client.get("/api/v1/public/notices?ci%00ty=haimen"), "query")
    # the fast intake and the tile fast path are behind the guard too
    refused(client.post("/api/v1/reports/json?city=%00", json={"category_code": "E10301"},
                        headers=auth(tokens["inspector"])), "query", "city")
    refused(client.get("/api/v1/tiles/grid_cells/12/3430/1673.mvt?city=hai%00men"), "query", "city")


@pytest.mark.parametrize("path, name", [
    ("/open311/v2/requests/%00.json", "request_id"),
    ("/open311/v2/tokens/a%1Fb.json", "token"),
    ("/api/v1/tiles/grid%00cells/12/3430/1673.mvt", "name"),
    ("/api/v1/assets/0101%7F", "code"),
    ("/api/v1/ogc/collections/grid_cells/items/1%00", "fid"),
])
def test_control_character_in_a_path_parameter(client, tokens, path, name):
    body = refused(client.get(path, headers=auth(tokens["admin"])), "path", name)
    assert "U+00" in body["detail"]


def test_control_character_in_json_fields(client, engine, tokens, schema):
    body = refused(client.post("/api/v1/public/status", json={"case_no": "\u0000", "query_code": "123456"}),
                   "body", "case_no")
    conforms(schema, body)
    op = auth(tokens["operator"])
    before = cases_written(engine)
    case = {"category_code": "E10101", "channel": "电话", "location": {"x": 121.17, "y": 31.89}}
    for bad in ("\u0000", "\x01", "\x0b", "\x7f", "\x1b[31m"):
        refused(client.post("/api/v1/cases", json={**case, "description": f"垃圾{bad}堆放"}, headers=op),
                "body", "description")
    refused(client.post("/api/v1/cases", json={**case, "contact": {"name": "张\u0000三"}}, headers=op),
            "body", "contact", "name")
    refused(client.post("/api/v1/cases", json={**case, "location": {**case["location"], "crs": "EPSG:4326\n"}},
                        headers=op), "body", "location", "crs")
    # identifiers take no tab or newline either; free text does
    refused(client.post("/api/v1/cases", json={**case, "category_code": "E10101\t"}, headers=op),
            "body", "category_code")
    # a lone surrogate (a JSON escape no UTF-8 text can hold)
    r = client.post("/api/v1/cases", content=b'{"category_code": "E10101", "title": "a\\ud800b"}',
                    headers={**op, "Content-Type": "application/json"})
    refused(r, "body", "title")
    assert cases_written(engine) == before


def test_free_text_keeps_tab_and_newlines(client, tokens):
    # accepted by validation: the answers are those of the request itself (unknown case / category)
    r = client.post("/api/v1/public/rate", json={"case_no": "HM-NO-SUCH", "query_code": "123456",
                                                 "rating": "satisfied", "comment": "第一行\n\t第二行\r\n"})
    assert r.status_code == 404, r.text
    r = client.post("/api/v1/cases", json={"category_code": "ZZ99", "channel": "电话",
                                           "description": "第一行\n\t第二行\r\n", "address": "某路\t1号"},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 422 and "unknown category" in r.json()["detail"], r.text


def test_control_character_nested_in_a_free_form_field(client, tokens):
    r = client.post("/api/v1/assets", json={"class_code": "0101", "geometry": {"type": "Po\u0000int",
                                                                                "coordinates": [121.17, 31.89]}},
                    headers=auth(tokens["admin"]))
    body = refused(r, "body", "geometry")
    assert "geometry.type" in body["detail"]


def test_fast_intake_refuses_control_characters(client, engine, tokens):
    before = count(engine, "SELECT count(*) FROM field_report")
    r = client.post("/api/v1/reports/json", json={"category_code": "E10301", "lon": 121.17, "lat": 31.89,
                                                  "description": "井盖\u0000破损"},
                    headers=auth(tokens["inspector"]))
    refused(r, "body", "description")
    assert count(engine, "SELECT count(*) FROM field_report") == before


def test_control_character_in_form_fields(client, engine):
    before = cases_written(engine)
    form = {"category_code": "E10301", "description": "路面很脏", "lon": "121.21", "lat": "31.91", "crs": "GCJ-02"}
    refused(client.post("/api/v1/public/requests", data={**form, "description": "路面\u0000很脏"}),
            "body", "description")
    refused(client.post("/api/v1/public/requests", data={**form, "phone": "136\x0100000000"}), "body", "phone")
    # multipart too, and the file's name
    r = client.post("/api/v1/public/requests", data={**form, "name": "赵\x7f六"},
                    files={"photo": ("p.jpg", b"\xff\xd8\xff", "image/jpeg")})
    refused(r, "body", "name")
    # (written by hand: httpx percent-encodes control characters in a file name)
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v.encode())
                     for k, v in form.items())
    raw = parts + b'--B\r\nContent-Disposition: form-data; name="photo"; filename="p\x01.jpg"\r\n' \
                  b'Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n--B--\r\n'
    r = client.post("/api/v1/public/requests", content=raw, headers={"Content-Type": "multipart/form-data; boundary=B"})
    refused(r, "body", "photo (the file name)")
    assert cases_written(engine) == before


def test_control_character_in_the_open311_form(client, engine, tokens):
    before = cases_written(engine)
    r = client.post("/open311/v2/requests.json", data={
        "api_key": tokens["operator"], "service_code": "E10301", "lat": "31.905", "long": "121.205",
        "description": "井盖\u0000丢失"})
    assert r.status_code == 422, r.text
    assert r.json()[0]["code"] == 422 and r.json()[0]["description"].startswith("description: ")
    assert cases_written(engine) == before


# --- integers and paging ---------------------------------------------------------------------------


def test_integers_beyond_64_bits(client, engine, tokens):
    op = auth(tokens["operator"])
    big = 2**63
    refused(client.get(f"/api/v1/cases?offset={big}", headers=op), "query", "offset")
    refused(client.get(f"/api/v1/cases?offset={MAX_OFFSET + 1}", headers=op), "query", "offset")
    refused(client.get(f"/api/v1/cases/{big}", headers=op), "path", "case_id")
    refused(client.get(f"/api/v1/ogc/collections/grid_cells/items?offset={big}"), "query", "offset")
    before = cases_written(engine)
    refused(client.post("/api/v1/cases", json={"category_code": "E10101", "asset_id": big}, headers=op),
            "body", "asset_id")
    refused(client.post("/api/v1/cases/1/merge", json={"into": big}, headers=op), "body", "into")
    refused(client.post(f"/api/v1/cases/{big}/merge", json={"into": 1}, headers=op), "path", "case_id")
    assert cases_written(engine) == before
    # the largest bigint is an id like any other: not found
    assert client.get(f"/api/v1/cases/{INT64_MAX}", headers=op).status_code == 404


def test_a_receiving_time_before_2000_is_refused(client, engine, tokens):
    """Year 1 fits PostgreSQL, and then broke the clocks, heat maps and cell statistics (500s)."""
    before = cases_written(engine)
    r = client.post("/api/v1/cases", json={"category_code": "E10101", "received_at": "0001-01-01T00:00:00"},
                    headers=auth(tokens["operator"]))
    assert "2000-01-01" in refused(r, "body", "received_at")["detail"]
    assert cases_written(engine) == before


def _integer_schemas(node, where=""):
    """(where, schema) of every integer schema in an OpenAPI fragment."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield where, node
        for k, v in node.items():
            yield from _integer_schemas(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _integer_schemas(v, f"{where}/{i}")


def test_every_integer_input_is_bounded_in_the_openapi(schema):
    """Every integer a client may send (parameters, request bodies) declares bounds within a bigint,
    and every limit/offset a cap: new routes cannot forget it."""
    inputs = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                inputs.append((f"{method} {path} {p['in']} {p['name']}", p["schema"]))
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                inputs.append((f"{method} {path} body {media}", content.get("schema", {})))
    resolved = schema["components"]["schemas"]

    def deref(node, seen=()):
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                return {} if name in seen else deref(resolved[name], (*seen, name))
            return {k: deref(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [deref(v, seen) for v in node]
        return node

    found = 0
    for where, s in inputs:
        for at, integer in _integer_schemas(deref(s), where):
            found += 1
            assert integer.get("maximum", INT64_MAX + 1) <= INT64_MAX, f"{at}: no 64-bit maximum"
            assert integer.get("minimum", -(2**63) - 1) >= -(2**63), f"{at}: no 64-bit minimum"
    assert found >= 20
    paging = [(f"{m} {path}", p) for path, item in schema["paths"].items() for m, op in item.items()
              for p in op.get("parameters", []) if p["name"] in ("limit", "offset")]
    assert len(paging) >= 10
    for where, p in paging:
        assert "maximum" in p["schema"], f"{where} {p['name']}: no cap"


# --- the error body --------------------------------------------------------------------------------


def test_validation_error_body_is_what_the_openapi_declares(client, tokens, schema):
    declared = schema["components"]["schemas"]["HTTPValidationError"]
    assert declared["properties"]["detail"]["type"] == "string"
    assert schema["paths"]["/api/v1/cases"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/HTTPValidationError"}
    # a pydantic error, an error raised by a route, and the guard's: all fit the declared schema
    for r in (client.post("/api/v1/cases", json={"category_code": 5}, headers=auth(tokens["operator"])),
              client.post("/api/v1/cases", json={"category_code": "ZZ99"}, headers=auth(tokens["operator"])),
              client.get("/api/v1/cases?limit=0", headers=auth(tokens["operator"])),
              client.get("/api/v1/public/notices?city=%00")):
        assert r.status_code == 422, r.text
        conforms(schema, r.json())
    r = client.get("/api/v1/cases?limit=0&offset=-1", headers=auth(tokens["operator"]))
    body = r.json()
    assert body["detail"].startswith("query.limit: ") and "; query.offset: " in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["query", "limit"], ["query", "offset"]]


def test_every_json_body_model_checks_characters(app):
    """Every route's JSON body is a :class:`api.validation.Body` (or a list/union of them)."""
    from pydantic import BaseModel

    from api.validation import Body, flatten_routes

    seen = 0
    for route in flatten_routes(app.routes):
        if not isinstance(route, APIRoute) or route.body_field is None:
            continue
        annotation = route.body_field.field_info.annotation
        models = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                  and issubclass(a, BaseModel)]
        for m in models:
            seen += 1
            if not m.__name__.startswith("Body_"):  # FastAPI's own model of a form's fields
                assert issubclass(m, Body), f"{route.path}: {m.__name__} is not an api.validation.Body"
    assert seen >= 10
