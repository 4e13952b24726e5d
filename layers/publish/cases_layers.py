"""Cases in the layer catalog (layers/publish/catalog.py).

* ``cases`` — one point per located case, for staff. Free text (description, address) and the caller's
  contact never appear: they may carry personal data.
* ``case_cells`` — cases counted per unit-grid cell, the form that may be published: no point of any
  case, so no caller's doorstep can be read off it.

What each audience may see of a case is decided in layers/core/publication.py; a layer registered here for
anonymous readers (``public=True``) must not select points or free text of cases (the PII scan in
tests/cases/test_pii.py reads every public layer drawn from case tables).
"""

from __future__ import annotations

from layers.publish.catalog import Field, Layer, register

register(Layer(
    name="cases", title="案件", title_en="Cases (hotline, inspectors, citizens)", theme="cases",
    geometry_type="Point",
    sql="""SELECT c.id AS fid, c.case_no, c.source, c.channel, c.category_code, c.category_name,
                  c.request_type, c.urgency, c.state, c.received_at, c.closed_at, c.cell_code, c.area_code,
                  d.name AS department, c.location AS geom
           FROM case_file c LEFT JOIN department d ON d.id = c.department_id
           WHERE c.city_id = :city_id AND c.location IS NOT NULL AND c.merged_into IS NULL""",
    fields=(Field("case_no", "str", "案卷号 Case number"), Field("source", "str", "来源 Source"),
            Field("channel", "str", "渠道 Channel"), Field("category_code", "str", "类别代码 Class code"),
            Field("category_name", "str", "类别 Class"), Field("request_type", "str", "诉求类型 Request type"),
            Field("urgency", "str", "紧急程度 Urgency"), Field("state", "str", "状态 State"),
            Field("received_at", "datetime", "受理时间 Received"), Field("closed_at", "datetime", "结案时间 Closed"),
            Field("cell_code", "str", "单元网格 Cell"), Field("area_code", "str", "区域 Area"),
            Field("department", "str", "处置部门 Department")),
    roles=frozenset({"operator", "supervisor", "planner", "admin"}), public=False,
    time_field="received_at", class_field="category_code", area_field="area_code",
    description="Located cases, duplicates (并单) left out; no free text and no caller data"))

register(Layer(
    name="case_cells", title="案件网格统计", title_en="Cases per grid cell", theme="cases",
    geometry_type="MultiPolygon",
    sql="""SELECT g.id AS fid, g.code AS cell_code, n.total, n.open, n.closed, g.geom
           FROM (SELECT c.cell_id, count(*) AS total,
                        count(*) FILTER (WHERE c.state NOT IN ('closed', 'rejected', 'void')) AS open,
                        count(*) FILTER (WHERE c.state = 'closed') AS closed
                 FROM case_file c
                 WHERE c.city_id = :city_id AND c.cell_id IS NOT NULL AND c.merged_into IS NULL
                 GROUP BY c.cell_id) n
           JOIN grid_cell g ON g.id = n.cell_id""",
    fields=(Field("cell_code", "str", "单元网格 Cell"), Field("total", "int", "案件数 Cases"),
            Field("open", "int", "在办 Open"), Field("closed", "int", "结案 Closed")),
    roles=frozenset({"inspector", "operator", "department", "supervisor", "planner", "admin"}), public=True,
    description="Counts of cases per unit-grid cell (all time); publishable: no case points"))
