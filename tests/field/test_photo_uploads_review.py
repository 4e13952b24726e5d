"""Review of the case photo routes (issue 13): a department's feedback with photos the size a phone
takes (the body cap of the route), photos sent under a field the route does not take (refused, not
dropped), the look-up's coded error body, and how long a browser keeps a photo of a signed address."""

from __future__ import annotations

import io
import os
import re
import time

from PIL import Image

from tests.field.conftest import jpeg
from tests.field.test_case_photos import _count, _feedback, _no_exif, processing  # noqa: F401 (fixture)


def _big_jpeg(min_bytes: int) -> bytes:
    """A real JPEG of more than ``min_bytes`` (noise does not compress), with EXIF."""
    side = 1200
    while True:
        im = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        exif = Image.Exif()
        exif[0x0110] = "Phone X"  # Model
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, exif=exif)
        if buf.tell() > min_bytes:
            return buf.getvalue()
        side += 400


def test_feedback_takes_photos_of_a_phone_size(client, engine, processing):  # noqa: F811
    c = processing
    big = _big_jpeg(2_500_000)  # more than the default 1 MiB body cap of the API
    r = _feedback(client, c, c["dept"], before=[jpeg(601)], after=[big, big])
    assert r.status_code == 201, r.text[:300]
    assert [p["kind"] for p in r.json()["photos"]] == ["before", "after", "after"]
    after = next(p for p in r.json()["photos"] if p["kind"] == "after")
    im = _no_exif(client.get(after["url"], headers=c["op"]).content)
    assert im.size == Image.open(io.BytesIO(big)).size
    assert _count(engine, "SELECT count(*) FROM case_feedback_photo WHERE case_id = :c AND step = 'after'", c=c["id"]) == 2


def test_feedback_refuses_photos_under_an_unknown_field(client, engine, processing):  # noqa: F811
    c = processing
    events = _count(engine, "SELECT count(*) FROM case_event WHERE case_id = :c", c=c["id"])
    # "photos" is the on-site check's field name: here it would have been dropped and the feedback taken
    r = client.post(f"/api/v1/cases/{c['id']}/feedback", data={"note": "done"},
                    files=[("photos", ("a.jpg", jpeg(610), "image/jpeg")), ("after", ("b.jpg", jpeg(611), "image/jpeg"))],
                    headers=c["dept"])
    assert r.status_code == 422, r.text
    body = r.json()
    assert "photos" in body["detail"] and "before" in body["detail"] and body["code"] == "invalid_input"
    assert "未知字段" in body["message"]
    assert _count(engine, "SELECT count(*) FROM case_event WHERE case_id = :c", c=c["id"]) == events
    assert _count(engine, "SELECT count(*) FROM case_feedback_photo WHERE case_id = :c", c=c["id"]) == 0
    assert _count(engine, "SELECT count(*) FROM case_file WHERE id = :c AND state = 'processing'", c=c["id"]) == 1
    # the fields it takes still pass
    assert _feedback(client, c, c["dept"], after=[jpeg(612)]).status_code == 201


def test_lookup_photos_errors_are_coded_and_signed_photos_not_kept_past_expiry(client, processing):  # noqa: F811
    c = processing
    r = client.post("/api/v1/public/photos", json={"case_no": c["case_no"], "query_code": "000000x"})
    assert r.status_code == 404
    body = r.json()
    assert body["code"] and body["message"] and "查询码" in body["message"], body
    got = client.post("/api/v1/public/photos", json={"case_no": c["case_no"], "query_code": c["query_code"]}).json()
    url = got["photos"][0]["url"]
    exp = int(re.search(r"exp=(\d+)", url).group(1))
    served = client.get(url)
    assert served.status_code == 200
    max_age = int(re.search(r"max-age=(\d+)", served.headers["cache-control"]).group(1))
    assert "private" in served.headers["cache-control"]
    assert 0 < max_age <= exp - int(time.time()) + 1
