"""Open311 GeoReport v2: every response validated against the published schemas, XML and JSON,
errors per spec, driven by the `georeport` client against the live server."""

from __future__ import annotations

import json

import jsonschema
import pytest
import requests
import xmltodict
from georeport import GeoReport

from tests.conftest import SHARED

SCHEMAS = SHARED / "open311"


@pytest.fixture(scope="module")
def validate():
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    store = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json") if p.name != "swagger.json"}
    registry = Registry().with_resources(
        [(name, Resource.from_contents(s, default_specification=DRAFT7)) for name, s in store.items()])

    def check(name: str, obj):
        jsonschema.Draft7Validator(store[name], registry=registry,
                                   format_checker=jsonschema.FormatChecker()).validate(obj)

    # The validator really checks (through $ref too): a numeric id is refused.
    with pytest.raises(jsonschema.ValidationError):
        check("services.json", [{"service_code": 1, "service_name": "x", "metadata": False, "type": "realtime"}])
    return check


@pytest.fixture(scope="module")
def base(live_server, departments):
    return live_server + "/open311/v2"


def test_services_and_definitions_with_the_client(base, validate):
    client = GeoReport(base)
    services = client.get_service_list()
    validate("services.json", services)
    codes = [s["service_code"] for s in services]
    assert "010101" in codes and "E10101" in codes and all(isinstance(c, str) for c in codes)
    d = client.get_service_definition("010101")
    validate("service-definition.json", d)
    assert d["attributes"][0]["code"] == "request_type"
    xml = GeoReport(base, output_format="xml")
    xs = xml.get_service_list()
    assert {s["service_code"] for s in xs} == set(codes)
    xd = xml.get_service_definition("E10101")
    assert xd["service_code"] == "E10101"
    assert [v["key"] for v in xd["attributes"]["attribute"]["values"]["value"]] == ["咨询", "求助", "投诉", "举报", "建议"]


def test_post_and_get_requests(base, validate, tokens):
    r = requests.post(base + "/requests.json", data={
        "api_key": tokens["operator"], "service_code": "E10301", "lat": "31.905", "long": "121.205",
        "description": "路面脏 dirty road", "first_name": "王", "last_name": "五", "phone": "13700000000",
        "email": "wang@example.com", "attribute[request_type]": "投诉"})
    assert r.status_code == 200, r.text
    made = r.json()
    assert isinstance(made[0]["service_request_id"], str)
    rid = made[0]["service_request_id"]
    client = GeoReport(base)
    one = client.get_service_request(rid)
    validate("request.json", one)
    assert one["status"] == "open" and one["extended_attributes"]["state"] == "collected"
    assert one["service_code"] == "E10301" and abs(one["lat"] - 31.905) < 1e-5
    assert one["description"] == "路面脏 dirty road"
    many = client.get_service_requests(service_code="E10301", status="open")
    validate("requests.json", many)
    assert rid in [x["service_request_id"] for x in many]
    text = requests.get(base + "/requests.json", params={"service_request_id": rid}).text
    assert "13700000000" not in text and "wang@example.com" not in text and "王" not in text
    # XML: the same request, parsed by the client.
    x = GeoReport(base, output_format="xml").get_service_request(rid)
    assert x["service_request_id"] == rid and x["status"] == "open"
    xr = requests.post(base + "/requests.xml", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                     "lat": "31.906", "long": "121.3"})
    assert xr.status_code == 200 and xr.headers["content-type"].startswith("text/xml")
    assert xmltodict.parse(xr.content)["service_requests"]["request"]["service_request_id"]
    tok = requests.get(base + f"/tokens/{rid}.json").json()
    assert tok == [{"service_request_id": rid, "token": rid}]


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_errors_follow_the_spec(base, tokens, fmt):
    def errors(resp):
        if fmt == "json":
            return resp.json()
        e = xmltodict.parse(resp.content)["errors"]["error"]
        return [{"code": int(e["code"]), "description": e["description"]}]

    r = requests.post(base + f"/requests.{fmt}", data={"service_code": "E10301", "lat": "31.9", "long": "121.2"})
    assert r.status_code == 403 and errors(r)[0]["code"] == 403
    cases = [({"service_code": "NOPE", "lat": "31.9", "long": "121.2"}, "not a service"),
             ({"lat": "31.9", "long": "121.2"}, "service_code is required"),
             ({"service_code": "E10301"}, "a location is required"),
             ({"service_code": "E10301", "lat": "abc", "long": "121.2"}, "not a number"),
             ({"service_code": "E10301", "lat": "39.9", "long": "116.4"}, "outside the city"),
             ({"service_code": "E10301", "lat": "31.9", "long": "121.2", "attribute[request_type]": "x"}, "not one of")]
    for data, msg in cases:
        r = requests.post(base + f"/requests.{fmt}", data={"api_key": tokens["operator"], **data})
        assert r.status_code == 400, (data, r.text)
        e = errors(r)
        assert e[0]["code"] == 400 and msg in e[0]["description"], e
    r = requests.get(base + f"/requests/999999999999.{fmt}")
    assert r.status_code == 404 and errors(r)[0]["code"] == 404
    r = requests.get(base + f"/services/NOPE.{fmt}")
    assert r.status_code == 404
    r = requests.get(base + f"/requests.{fmt}", params={"start_date": "yesterday"})
    assert r.status_code == 400 and "W3C" in errors(r)[0]["description"]
    r = requests.get(base + f"/requests.{fmt}", params={"start_date": "2020-01-01T00:00:00Z",
                                                          "end_date": "2020-12-01T00:00:00Z"})
    assert r.status_code == 400 and "90 days" in errors(r)[0]["description"]
    r = requests.get(base + f"/services.{fmt}", params={"jurisdiction_id": "atlantis"})
    assert r.status_code == 404


def test_discovery(base):
    d = requests.get(base + "/discovery.json").json()
    assert d["endpoints"][0]["url"].endswith("/open311/v2") and "text/xml" in d["endpoints"][0]["formats"]
    x = xmltodict.parse(requests.get(base + "/discovery.xml").content)["discovery"]
    assert x["endpoints"]["endpoint"]["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert requests.get(base + "/discovery.yaml").status_code == 404
