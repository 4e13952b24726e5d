"""Field work's layers in the catalog (layers/catalog.py): key zones, and patrol tracks for staff.

Coverage per period is computed on request (GET /api/v1/zones/coverage returns it as a GeoJSON layer);
the catalog's layers are static SQL, so it lists the zones themselves here.
"""

from __future__ import annotations

from layers.catalog import Field, Layer, register

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
