"""Print how consistent a database's demo cases are (PostGIS): cases without a cell, outside the city,
outside the area of the street office they are assigned to, with a class missing from the catalog;
and departments with the same name. The test tests/demo/test_demo_data.py asserts all are 0.

    PYTHONPATH=. python scripts/check_demo_consistency.py [DATABASE_URL] [CITY_SLUG]
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine, text


def main(argv: list[str]) -> int:
    from citygrid.dbcluster import database_url
    from layers.cases.classes import catalog

    url = argv[0] if argv else database_url()
    slug = argv[1] if len(argv) > 1 else "haimen"
    with create_engine(url).connect() as conn:
        cid = conn.execute(text("SELECT id FROM city WHERE slug = :s"), {"s": slug}).scalar()
        if cid is None:
            print(f"no city {slug}")
            return 1
        row = conn.execute(text("""
            SELECT count(*) AS cases,
                   count(*) FILTER (WHERE f.cell_id IS NULL) AS no_cell,
                   count(*) FILTER (WHERE f.location IS NULL OR NOT ST_Covers(c.boundary, f.location)) AS outside_city,
                   count(*) FILTER (WHERE d.kind = 'street' AND NOT ST_Covers(a.geom, f.location)) AS outside_office_area,
                   count(*) FILTER (WHERE f.state NOT IN ('closed', 'rejected', 'merged', 'void')
                                    AND (f.cell_id IS NULL OR NOT ST_Covers(c.boundary, f.location))) AS open_outside
            FROM case_file f JOIN city c ON c.id = f.city_id
            LEFT JOIN department d ON d.id = f.department_id
            LEFT JOIN admin_area a ON a.city_id = f.city_id AND a.level = 'street' AND a.code = d.area_code
            WHERE f.city_id = :c AND f.source_ref LIKE 'synthetic:%'"""), {"c": cid}).mappings().one()
        codes = conn.execute(text("SELECT DISTINCT category_code FROM case_file WHERE city_id = :c "
                                  "AND source_ref LIKE 'synthetic:%'"), {"c": cid}).scalars().all()
        dup = conn.execute(text("""SELECT count(*) FROM (SELECT split_part(name, ' ', 1) FROM department
                                   WHERE city_id = :c AND active GROUP BY 1 HAVING count(*) > 1) t"""),
                           {"c": cid}).scalar()
    print({**dict(row), "classes_not_in_catalog": sorted(set(codes) - set(catalog())),
           "duplicate_department_names": dup})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
