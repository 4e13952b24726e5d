"""The publication policy's scrubber and address generaliser on hand-made cases (no database)."""

from __future__ import annotations

import json

import pytest

from layers.core import publication as pub
from layers.core.models import ROLES


@pytest.mark.parametrize("raw, token", [
    # Chinese mobiles: plain, grouped, with +86 / 0086 / 86, full-width digits
    ("13812345678", "[电话]"), ("138 1234 5678", "[电话]"), ("138-1234-5678", "[电话]"),
    ("+86 13812345678", "[电话]"), ("+8613812345678", "[电话]"), ("008613812345678", "[电话]"),
    ("86-13812345678", "[电话]"), ("１３８１２３４５６７８", "[电话]"), ("19912345678", "[电话]"),
    # landlines with area code, with an extension, and without area code
    ("0513-82123456", "[电话]"), ("(0513)82123456", "[电话]"), ("（0513）82123456", "[电话]"),
    ("0513 8212 3456", "[电话]"), ("051382123456", "[电话]"), ("010-12345678", "[电话]"),
    ("0513-82123456转801", "[电话]"), ("0513-82123456-801", "[电话]"),
    ("82123456", "[电话]"), ("8212-3456", "[电话]"), ("6123456", "[电话]"),
    # 18-digit ID numbers, X check digit either case
    ("32061419900101123X", "[证件号]"), ("32061419900101123x", "[证件号]"), ("320614199001011234", "[证件号]"),
    ("320614 19900101 1234", "[证件号]"),
    # e-mail
    ("zhang.san+x@mail.example.com.cn", "[邮箱]"), ("a_b-1@qq.com", "[邮箱]"),
    # plates: classic, new-energy with and without the dot, lower case, trailer
    ("苏F12345", "[车牌]"), ("苏F·D12345", "[车牌]"), ("苏FD12345", "[车牌]"), ("苏f12345", "[车牌]"),
    ("苏F 12345", "[车牌]"), ("沪A1234挂", "[车牌]"), ("京AD12345", "[车牌]"),
    # doorsteps: house, building, unit, room numbers
    ("123号5幢301室", "[门牌]"), ("8号楼2单元1502室", "[门牌]"), ("12-3号", "[门牌]"), ("5栋 3 单元 402", "[门牌]"),
])
def test_each_kind_is_replaced(raw, token):
    for text in (raw, f"请联系：{raw}。谢谢", f"问题{raw}问题"):
        out = pub.scrub(text)
        assert token in out, (text, out)
        digits = [c for c in raw if c.isdigit()]
        assert len(digits) < 4 or "".join(digits) not in "".join(c for c in out if c.isdigit()), (text, out)


def test_a_whole_description():
    text = ("我叫张三，手机13812345678，座机0513-82123456，身份证32061419900101123X，邮箱zs@example.com，"
            "车牌苏F·D12345，住人民中路123号5幢301室，请王先生尽快处理")
    out = pub.scrub(text)
    assert out == ("我叫[姓名]，手机[电话]，座机[电话]，身份证[证件号]，邮箱[邮箱]，车牌[车牌]，住人民中路[门牌]，"
                   "请某先生尽快处理")
    assert pub.scrub(out) == out  # idempotent


@pytest.mark.parametrize("text", [
    "案卷 3206142026120400000012 已办结",          # case number (22 digits)
    "网格 320614001001001 和 32061400100101",      # cell codes (15 and 14 digits)
    "部件 3206140101000001",                      # asset code (16 digits)
    "2026-12-04 08:30 发现", "20261204 发现", "2026年12月4日", "12月3号下午", "2026/12/04",
    "类别 E10301 与 010101", "3号线地铁口", "垃圾5处，长100米，约3000000元", "路灯 12 盏",
    "苏州路上有垃圾", "江苏省南通市海门区", "张謇大道上积水", "海门街道人民中路垃圾没人清",
    "1234567", "GPS 121.17137, 31.89173", "第2次投诉", "马路边井盖丢失", "陈旧的路灯", "林荫道树枝折断",
])
def test_what_must_not_be_scrubbed(text):
    assert pub.scrub(text) == text


def test_names():
    assert pub.scrub("联系人：李四 说") == "联系人：[姓名] 说"
    assert pub.scrub("我叫欧阳明珠住这里") == "我叫[姓名]住这里"
    assert pub.scrub("姓名:王小明，") == "姓名:[姓名]，"
    assert pub.scrub("赵女士反映") == "某女士反映"
    # The case's own contact wherever it occurs, also split or its phone written differently.
    assert pub.scrub("马冬梅说的，找马冬梅", known=["马冬梅", None]) == "[姓名]说的，找[姓名]"
    assert pub.scrub("王 五 来电", known=["王 五"]) == "[姓名] 来电"
    assert pub.scrub("回拨 13700000000", known=[None, "13700000000"]) == "回拨 [电话]"
    assert pub.scrub(None) is None and pub.scrub("") == ""


@pytest.mark.parametrize("address, expected", [
    ("江苏省南通市海门区人民中路123号5幢301室", "江苏省南通市海门区人民中路"),
    ("人民中路188号7幢1502室", "人民中路"),
    ("海门街道核查测试路 1 号", "海门街道核查测试路"),
    ("张謇大道88号", "张謇大道"),
    ("解放东街12号", "解放东街"),
    ("人民路与长江路交叉口", "人民路"),
    ("常乐镇3组12号", "常乐镇"),
    ("某某小区5幢301", "单元网格 320614001001001"),
    ("13812345678", "单元网格 320614001001001"),
    (None, "单元网格 320614001001001"),
])
def test_addresses_are_generalised_to_road_or_cell(address, expected):
    assert pub.generalise_address(address, "320614001001001", mode="road") == expected


def test_address_modes():
    assert pub.generalise_address("人民中路1号", "320614001001001", mode="cell") == "单元网格 320614001001001"
    assert pub.generalise_address("人民中路1号", "320614001001001", mode="none") is None
    assert pub.generalise_address("某某小区5幢", None, mode="road") is None


def test_policy_file_and_roles(tmp_path):
    p = pub.policy()
    assert p.channel("hotline") == "summary" and p.channel("inspector") == "summary"
    assert p.channel("citizen") == "text" and p.channel("open311") == "text"
    assert p.full_text_roles | p.scrubbed_text_roles == set(ROLES)
    assert {r for r in ROLES if pub.text_form(r) == "scrubbed"} == {"inspector", "planner"}
    assert pub.text_form(None) == "scrubbed"
    cfg = json.loads(pub.POLICY_FILE.read_text(encoding="utf-8"))
    for bad in ({**cfg, "channels": {**cfg["channels"], "hotline": "all"}},
                {**cfg, "address": "house"},
                {**cfg, "scrubbed_text_roles": ["inspector"]}):
        f = tmp_path / "p.json"
        f.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ValueError):
            pub.load_policy(f)
    f.write_text(json.dumps({**cfg, "channels": {**cfg["channels"], "hotline": "none"}}), encoding="utf-8")
    assert "hotline" not in pub.load_policy(f).published_sources()


def test_staff_case_forms():
    case = {"id": 1, "title": "张三来电", "description": "电话13812345678", "address": "人民中路1号",
            "cell_code": "320614001001001", "contact": {"name": "张三", "phone": "13812345678"},
            "events": [{"kind": "note", "note": "回电 13812345678"}, {"kind": "accepted", "note": None}]}
    full = pub.staff_case(case, "operator", ["张三"])
    assert full["description"] == case["description"] and full["contact"] and full["text_form"] == "full"
    s = pub.staff_case(case, "planner", ["张三", "13812345678"])
    assert s == {"id": 1, "title": "[姓名]来电", "description": "电话[电话]", "address": "人民中路",
                 "cell_code": "320614001001001", "text_form": "scrubbed",
                 "events": [{"kind": "note", "note": "回电 [电话]"}, {"kind": "accepted", "note": None}]}


def test_public_case_by_channel():
    row = {"source": "hotline", "description": "电话13812345678 垃圾", "address": "人民中路1号",
           "cell_code": "320614001001001", "cell_lon": 121.1234567, "cell_lat": 31.8765432,
           "contact_name": "张三", "contact_phone": None, "contact_openid": None}
    assert pub.public_case(row) == {"form": "summary", "cell_code": "320614001001001", "description": None,
                                    "address": None, "lon": 121.123457, "lat": 31.876543}
    t = pub.public_case({**row, "source": "citizen", "description": "张三说 电话13812345678 垃圾"})
    assert t["form"] == "text" and t["description"] == "[姓名]说 电话[电话] 垃圾" and t["address"] == "人民中路"


def test_public_layers_of_cases_publish_no_points_and_no_text():
    from layers.publish.catalog import Field, Layer, register

    sql = "SELECT c.id AS fid, c.case_no, c.description, c.location AS geom FROM case_file c WHERE c.city_id = :city_id"
    with pytest.raises(ValueError, match="points"):
        register(Layer(name="leaky_points", title="x", title_en="x", theme="cases", geometry_type="Point", sql=sql,
                       fields=(Field("case_no", "str"),), public=True))
    with pytest.raises(ValueError, match="description"):
        register(Layer(name="leaky_text", title="x", title_en="x", theme="cases", geometry_type="MultiPolygon",
                       sql=sql, fields=(Field("case_no", "str"), Field("description", "str")), public=True))
    # Staff-only, or the text kept out of the public form: allowed.
    ok = Layer(name="staff_points", title="x", title_en="x", theme="cases", geometry_type="Point", sql=sql,
               fields=(Field("case_no", "str"), Field("description", "str")), public=False)
    pub.check_public_layer(ok)
    pub.check_public_layer(Layer(name="cells_ok", title="x", title_en="x", theme="cases", geometry_type="MultiPolygon",
                                 sql=sql, fields=(Field("description", "str", public=False),), public=True))
