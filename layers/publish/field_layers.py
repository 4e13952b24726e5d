"""Field work's layers in the catalog (layers/publish/catalog.py): key zones, their patrol coverage in the
current period, and patrol tracks for staff.

Coverage of any period is computed on request (GET /api/v1/zones/coverage returns it as GeoJSON). The
layer ``zone_coverage`` is that same computation (layers.field.patrols.coverage) for the current period (this
ISO week so far), kept in the table ``zone_coverage`` (migration 0014) that the catalog's SQL reads:
``layers.field.patrols.refresh_coverage_layer`` recomputes it before a read when the period, the zones or the
period's tracks changed.
"""

from __future__ import annotations

from layers.publish.catalog import Field, Layer, register


def _refresh_coverage(conn, city) -> None:
    from layers.field import patrols

    patrols.refresh_coverage_layer(conn, city)


register(Layer(
    name="key_zones", title="重点区域", title_en="Key zones (patrol)", theme="field", geometry_type="Geometry",
    sql="""SELECT z.id AS fid, z.code, z.name, z.zone_type, z.frequency, z.area_code, z.measure, z.buffer_m,
                  z.made_up, z.geom
           FROM key_zone z WHERE z.city_id = :city_id AND z.active""",
    fields=(Field("code", "str", "编号 Code"), Field("name", "str", "名称 Name"),
            Field("zone_type", "str", "类型 Type"), Field("frequency", "str", "巡查频次 Patrol frequency"),
            Field("area_code", "str", "责任区域 Owning area"), Field("measure", "str", "覆盖度量 Measured by"),
            Field("buffer_m", "float", "半宽 Half-width (lines, m)"),
            Field("made_up", "bool", "示例数据 Made-up demo data")),
    roles=frozenset({"inspector", "operator", "supervisor", "planner", "admin"}), public=False,
    class_field="zone_type", area_field="area_code",
    description="重点区域: polygons, road centrelines (with a half-width) and points, with a patrol frequency; "
                "coverage per period: GET /api/v1/zones/coverage"))

register(Layer(
    name="patrol_tracks", title="巡查轨迹", title_en="Patrol tracks", theme="field", geometry_type="LineString",
    sql="""SELECT t.id AS fid, t.started_at, t.ended_at, t.length_m, t.fixes, t.kept, t.geom
           FROM patrol_track t WHERE t.city_id = :city_id""",
    fields=(Field("started_at", "datetime", "开始 Started"), Field("ended_at", "datetime", "结束 Ended"),
            Field("length_m", "float", "长度 Length (m)"), Field("fixes", "int", "定位点 Fixes"),
            Field("kept", "int", "有效点 Fixes kept")),
    roles=frozenset({"supervisor", "planner", "admin"}), public=False, time_field="started_at",
    description="Inspectors' cleaned patrol tracks (who walked is not published in the layer)"))

register(Layer(
    name="zone_coverage", title="重点区域巡查覆盖", title_en="Key-zone patrol coverage (this week)", theme="field",
    geometry_type="Geometry",
    sql="""SELECT z.id AS fid, z.code, z.name, z.zone_type, z.frequency, z.area_code, z.made_up,
                  c.period_start, c.period_end, c.kind AS measure, c.share, c.covered, c.total, c.visits, c.tracks,
                  c.required, c.per, c.frequency_met,
                  CASE WHEN c.frequency_met THEN 'met' ELSE 'missed' END AS status, c.short_periods,
                  c.buffer_m AS coverage_buffer_m, c.computed_at, z.geom
           FROM zone_coverage c JOIN key_zone z ON z.id = c.zone_id
           WHERE c.city_id = :city_id AND z.active""",
    fields=(Field("code", "str", "编号 Code"), Field("name", "str", "名称 Name"),
            Field("zone_type", "str", "类型 Type"), Field("frequency", "str", "巡查频次 Patrol frequency"),
            Field("area_code", "str", "责任区域 Owning area"), Field("made_up", "bool", "示例数据 Made-up demo data"),
            Field("period_start", "date", "统计起 Period start"), Field("period_end", "date", "统计止 Period end"),
            Field("measure", "str", "覆盖度量 Measured by (area/length/points)"),
            Field("share", "float", "覆盖率 Share covered (0–1)"),
            Field("covered", "float", "已覆盖 Covered (m², m or points)"),
            Field("total", "float", "总量 Total (m², m or points)"),
            Field("visits", "int", "巡查次数 Visits"), Field("tracks", "int", "轨迹数 Tracks"),
            Field("required", "int", "应巡次数 Required visits per day/week"),
            Field("per", "str", "频次周期 Required per (day/week)"),
            Field("frequency_met", "bool", "达标 Frequency met"), Field("status", "str", "达标/漏巡 met or missed"),
            Field("short_periods", "int", "未达标天/周 Days (weeks) short"),
            Field("coverage_buffer_m", "float", "覆盖缓冲 Coverage buffer (m)"),
            Field("computed_at", "datetime", "计算时间 Computed at")),
    roles=frozenset({"supervisor", "planner", "admin"}), public=False,
    class_field="zone_type", area_field="area_code", refresh=_refresh_coverage,
    description="巡查覆盖 of each key zone this ISO week so far (Monday … today, Asia/Shanghai), as "
                "GET /api/v1/zones/coverage computes it for that period; no inspector is named"))
