"""Tables (GeoAlchemy2). The schema itself comes from the Alembic migrations in ``layers/migrations``.

Geometry is stored in the city's working CRS (a projected CRS in metres, for China the CGCS2000
3-degree Gauss-Krüger zone). One database may hold several cities, each with its own working CRS, so
geometry columns carry no SRID type modifier; every geometry has the SRID of its city (checked).
"""

from __future__ import annotations

import datetime as dt

from geoalchemy2 import Geometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("inspector", "operator", "department", "supervisor", "planner", "admin")
ROLE_LABELS = {
    "inspector": "信息采集员 Inspector",
    "operator": "受理员/派遣员 Operator / dispatcher",
    "department": "处置部门 Department",
    "supervisor": "督查/领导 Supervisor",
    "planner": "规划 Planner",
    "admin": "管理员 Administrator",
}
AREA_LEVELS = ("district", "street", "community")


def _geom(kind: str = "GEOMETRY") -> Geometry:
    return Geometry(kind, srid=-1, spatial_index=False)


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "city"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    adcode: Mapped[str] = mapped_column(String(6))
    working_srid: Mapped[int] = mapped_column(Integer)
    source_crs: Mapped[str] = mapped_column(Text)
    boundary = mapped_column(_geom("MULTIPOLYGON"), nullable=False)
    area_m2: Mapped[float] = mapped_column(Double)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AdminArea(Base):
    __tablename__ = "admin_area"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("city.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(12))
    code: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("admin_area.id", ondelete="CASCADE"))
    #: True where the border was drawn by citygrid (no official polygon was available).
    made_up: Mapped[bool] = mapped_column(Boolean, default=False)
    geom = mapped_column(_geom("MULTIPOLYGON"), nullable=False)


class Grid(Base):
    __tablename__ = "grid"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("city.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(12))  # 'regular' | 'imported'
    cell_size: Mapped[float | None] = mapped_column(Double)
    srid: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    valid_from: Mapped[dt.date] = mapped_column(Date, server_default=func.current_date())
    valid_to: Mapped[dt.date | None] = mapped_column(Date)
    source: Mapped[str | None] = mapped_column(Text)
    cell_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GridCell(Base):
    __tablename__ = "grid_cell"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"))
    #: 15 digits (6 district + 3 street + 3 community + 3 sequence) or the 14-digit variant.
    code: Mapped[str] = mapped_column(String(15))
    #: Stable key of a regular grid: col = floor(x / size), row = floor(y / size). NULL when imported.
    col: Mapped[int | None] = mapped_column(Integer)
    row: Mapped[int | None] = mapped_column(Integer)
    #: The cell was clipped by the city boundary (not the full square).
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    area_id: Mapped[int | None] = mapped_column(ForeignKey("admin_area.id", ondelete="SET NULL"))
    area_m2: Mapped[float] = mapped_column(Double)
    #: 责任单位 (responsible party); NULL = the territorial unit answers (属地兜底).
    responsible: Mapped[str | None] = mapped_column(Text)
    geom = mapped_column(_geom("MULTIPOLYGON"), nullable=False)


class AppUser(Base):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    department: Mapped[str | None] = mapped_column(Text)
    area_code: Mapped[str | None] = mapped_column(String(15))
    #: sha256 of the bearer token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: The token's life (migration 0017): issued, expires (always), revoked (or NULL); its last use
    #: to the minute.
    token_issued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    token_expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    token_revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Sign-in (migration 0020): the argon2 hash of the password (NULL: token only), when it was set,
    #: when the user was disabled (then also active = false).
    password_hash: Mapped[str | None] = mapped_column(Text)
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
