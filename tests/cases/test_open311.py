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


def _cell_centroid(engine, case_no):
    """The WGS-84 centroid of the case's unit-grid cell (what anonymous output shows for its place)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("""SELECT ST_X(ST_Transform(ST_Centroid(g.geom), 4326)), ST_Y(ST_Transform(ST_Centroid(g.geom), 4326)),
                                           ST_X(ST_Transform(c.location, 4326)), ST_Y(ST_Transform(c.location, 4326))
                                    FROM case_file c JOIN grid_cell g ON g.id = c.cell_id WHERE c.case_no = :n"""),
                            {"n": case_no}).one()


def test_post_and_get_requests(base, validate, tokens, engine):
    r = requests.post(base + "/requests.json", data={
        "api_key": tokens["operator"], "service_code": "E10301", "lat": "31.905", "long": "121.205",
        "description": "路面脏 dirty road", "first_name": "王", "last_name": "五", "phone": "13700000000",
        "email": "wang@example.com", "attribute[request_type]": "投诉"})
    assert r.status_code == 200, r.text
    made = r.json()
    assert isinstance(made[0]["service_request_id"], str)
    rid = made[0]["service_request_id"]
    assert made[0]["token"] == rid  # the POST answer carries the token; GET /tokens/{token} finds the request
    client = GeoReport(base)
    one = client.get_service_request(rid)
    validate("request.json", one)
    assert one["status"] == "open" and one["extended_attributes"]["state"] == "collected"
    # The position is the centroid of the request's cell, never the exact point.
    cx, cy, x, y = _cell_centroid(engine, rid)
    assert one["service_code"] == "E10301"
    assert one["lat"] == round(cy, 6) and one["long"] == round(cx, 6)
    assert abs(y - 31.905) < 1e-9 and (one["lat"], one["long"]) != (round(y, 6), round(x, 6))
    assert one["extended_attributes"]["position"] == "cell_centroid"
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
    xreq = xmltodict.parse(xr.content)["service_requests"]["request"]
    assert xreq["service_request_id"] and xreq["token"] == xreq["service_request_id"]
    tok = requests.get(base + f"/tokens/{made[0]['token']}.json").json()
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


def _count(engine, sql="SELECT count(*) FROM case_file WHERE source = 'open311'", **params):
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_api_key_must_be_of_a_filing_role_and_in_the_body(base, tokens, engine, fmt):
    form = {"service_code": "E10301", "lat": "31.9", "long": "121.2", "description": "role check"}
    before = _count(engine)
    for role in ("planner", "inspector", "department", "supervisor"):
        r = requests.post(base + f"/requests.{fmt}", data={"api_key": tokens[role], **form})
        assert r.status_code == 403, (role, r.text)
        assert f"'{role}' may not create requests" in r.text and "operator" in r.text
    # In the query string it is refused (URLs are logged), even with a valid key, even with one in the body too.
    for where in ({"params": {"api_key": tokens["operator"]}, "data": form},
                  {"params": {"api_key": tokens["operator"]}, "data": {"api_key": tokens["operator"], **form}}):
        r = requests.post(base + f"/requests.{fmt}", **where)
        assert r.status_code == 400, r.text
        assert "api_key must be sent in the form body, not in the URL" in r.text
    # Other fields in the query string are not read either: only the form body counts.
    r = requests.post(base + f"/requests.{fmt}", params=form, data={"api_key": tokens["admin"]})
    assert r.status_code == 400 and "service_code is required" in r.text
    assert _count(engine) == before  # nothing was created
    for role in ("operator", "admin"):
        r = requests.post(base + f"/requests.{fmt}", data={"api_key": tokens[role], **form})
        assert r.status_code == 200, (role, r.text)
    assert _count(engine) == before + 2


def test_media_url_is_stored_and_returned(base, tokens, engine):
    url = "https://img.example.org/p/road-1.jpg?size=large"
    r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                     "lat": "31.9", "long": "121.21", "media_url": url})
    assert r.status_code == 200, r.text
    rid = r.json()[0]["service_request_id"]
    assert _count(engine, "SELECT count(*) FROM case_media m JOIN case_file c ON c.id = m.case_id "
                          "WHERE c.case_no = :n AND m.media_url = :u", n=rid, u=url) == 1
    assert requests.get(base + f"/requests/{rid}.json").json()[0]["media_url"] == url
    x = xmltodict.parse(requests.get(base + f"/requests/{rid}.xml").content)["service_requests"]["request"]
    assert x["media_url"] == url
    # Without one: null. A URL that carries personal data is stored but not published.
    r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                     "lat": "31.9", "long": "121.21"})
    assert requests.get(base + f"/requests/{r.json()[0]['service_request_id']}.json").json()[0]["media_url"] is None
    r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                     "lat": "31.9", "long": "121.21",
                                                     "media_url": "https://img.example.org/13812345678.jpg"})
    one = requests.get(base + f"/requests/{r.json()[0]['service_request_id']}.json").json()[0]
    assert one["media_url"] is None
    before = _count(engine)
    for bad in ("ftp://x.example/a.jpg", "javascript:alert(1)", "not a url", "https://" + "a" * 2001):
        r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                         "lat": "31.9", "long": "121.21", "media_url": bad})
        assert r.status_code == 400 and "media_url" in r.json()[0]["description"], (bad, r.text)
    assert _count(engine) == before


def test_request_lists_page_and_say_when_cut(base, tokens, engine):
    import datetime as dt

    from layers.cases import calendar as lcal

    # The workflow's clock (the cases' received_at and the default end_date are read from it).
    start = (lcal.now().astimezone(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = []
    for i in range(5):
        r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "010203",
                                                         "lat": "31.9", "long": f"{121.15 + i * 0.01:.3f}"})
        assert r.status_code == 200, r.text
        made.append(r.json()[0]["service_request_id"])
    q = {"service_code": "010203", "start_date": start}
    seen, page, links = [], 1, []
    while True:
        r = requests.get(base + "/requests.json", params={**q, "page": page, "page_size": 2})
        assert r.status_code == 200, r.text
        assert r.headers["X-Total-Count"] == "5" and r.headers["X-Page"] == str(page) and r.headers["X-Page-Size"] == "2"
        items = [x["service_request_id"] for x in r.json()]
        seen += items
        more = page < 3
        assert r.headers["X-Truncated"] == ("true" if more else "false")
        assert ("Link" in r.headers) == more
        if not more:
            break
        links.append(r.headers["Link"])
        assert len(items) == 2 and 'rel="next"' in r.headers["Link"] and f"page={page + 1}" in r.headers["Link"]
        page += 1
    assert sorted(seen) == sorted(made) and len(seen) == 5
    # The Link is followable as given.
    nxt = links[0].split(";")[0].strip("<>")
    r = requests.get(base.rsplit("/open311/v2", 1)[0] + nxt)
    assert [x["service_request_id"] for x in r.json()] == seen[2:4]
    # XML: the same headers.
    r = requests.get(base + "/requests.xml", params={**q, "page_size": 4})
    assert r.headers["X-Truncated"] == "true"
    assert len(xmltodict.parse(r.content, force_list=("request",))["service_requests"]["request"]) == 4
    # The default page is 50, not 1,000; page_size is capped; bad values are a 400 saying what is wrong.
    r = requests.get(base + "/requests.json")
    assert r.headers["X-Page-Size"] == "50" and len(r.json()) == min(50, int(r.headers["X-Total-Count"]))
    for bad in ({"page_size": "201"}, {"page_size": "0"}, {"page": "0"}, {"page": "x"},
                {"page": "9223372036854775808"}):
        r = requests.get(base + "/requests.json", params=bad)
        assert r.status_code == 400 and next(iter(bad)) in r.json()[0]["description"], (bad, r.text)
    r = requests.get(base + "/requests.json", params={"service_request_id": ",".join(str(i) for i in range(201))})
    assert r.status_code == 400 and "at most 200" in r.json()[0]["description"]


def test_xml_never_carries_an_illegal_character(base, tokens, engine):
    """A control character in stored text (however it got there) leaves the XML well-formed."""
    from lxml import etree
    from sqlalchemy import text

    from layers.cases import open311 as o3

    bad = "灯坏了\x01\x0b\x00\x1f\ufffe end <&>"
    doc = o3.to_xml("service_requests", [{"description": bad, "service_request_id": "1"}])
    root = etree.fromstring(doc.encode())
    assert root.find("request/description").text == "灯坏了\ufffd\ufffd\ufffd\ufffd\ufffd end <&>"
    r = requests.post(base + "/requests.json", data={"api_key": tokens["operator"], "service_code": "E10301",
                                                     "lat": "31.9", "long": "121.22", "description": "灯坏了"})
    rid = r.json()[0]["service_request_id"]
    with engine.begin() as conn:  # as an older version or an import may have stored it
        conn.execute(text("UPDATE case_file SET description = :d WHERE case_no = :n"),
                     {"d": bad.replace("\x00", ""), "n": rid})  # PostgreSQL text holds no NUL
    for url, params in ((f"/requests/{rid}.xml", {}), ("/requests.xml", {"service_request_id": rid}),
                        ("/requests.xml", {"service_code": "E10301"})):
        r = requests.get(base + url, params=params)
        assert r.status_code == 200
        root = etree.fromstring(r.content)  # raises on ill-formed XML
        descs = [d.text for d in root.iter("description") if d.text and d.text.startswith("灯坏了")]
        assert descs and all("\ufffd" in d and "\x01" not in d for d in descs)
