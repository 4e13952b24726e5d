"""The supervisor's folium map: heat and significant hot spots on a Leaflet page (vendored Leaflet,
no CDN).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------------------------
# folium
# ----------------------------------------------------------------------------------------------

LEAFLET_JS = "/static/vendor/leaflet/leaflet.js"
LEAFLET_CSS = "/static/vendor/leaflet/leaflet.css"


def folium_map(heat_fc: dict, hot_fc: dict, *, title: str = "") -> str:
    """A folium map (HTML) of the heat and hot-spot cell layers with a layer control; Leaflet comes
    from the vendored copy (no CDN, no tile server: the page works offline)."""
    import json

    import folium

    m = folium.Map(tiles=None, control_scale=True, prefer_canvas=True)
    m.default_js = [("leaflet", LEAFLET_JS)]
    m.default_css = [("leaflet_css", LEAFLET_CSS)]
    ramp = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"]
    bins = {3: "#b2182b", 2: "#ef8a62", 1: "#fddbc7", -1: "#d1e5f0", -2: "#67a9cf", -3: "#2166ac"}

    def parsed(fc):
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": f["properties"],
             "geometry": json.loads(f["geometry"]) if isinstance(f["geometry"], str) else f["geometry"]}
            for f in fc["features"]]}

    heat = parsed(heat_fc)
    hot = parsed(hot_fc)
    # (a tooltip needs at least one feature to read its fields from)
    folium.GeoJson(heat, name="热力 Heat", style_function=lambda f: {
        "weight": 0.5, "color": ramp[min(7, int(f["properties"]["level"] * 8))], "fillOpacity": 0.7,
        "fillColor": ramp[min(7, int(f["properties"]["level"] * 8))]},
        tooltip=folium.GeoJsonTooltip(["code", "density"], aliases=["网格 Cell", "件/km²"])
        if heat["features"] else None).add_to(m)
    hot_name = "热点 Hot spots"
    if hot_fc.get("status") == "too_few_cases":
        hot_name += " — " + hot_fc["message"]
    elif hot_fc.get("scale"):
        hot_name += f" (单元 unit {hot_fc['scale']['unit_m']:g} m, {hot_fc['cases']} 件 cases, FDR)"
    folium.GeoJson(hot, name=hot_name, style_function=lambda f: {
        "weight": 0.3, "color": "#555", "fillOpacity": 0.75, "fillColor": bins[f["properties"]["bin"]]},
        tooltip=folium.GeoJsonTooltip(["label", "observed", "expected", "p", "cells"],
                                      aliases=["类别 Class", "观测 Observed", "期望 Expected", "p", "网格数 Cells"])
        if hot["features"] else None).add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    feats = heat["features"] + hot["features"]
    if feats:
        import shapely

        b = shapely.total_bounds(shapely.from_geojson([json.dumps(f["geometry"]) for f in feats]))
        m.fit_bounds([[b[1], b[0]], [b[3], b[2]]])
    if title:
        m.get_root().html.add_child(folium.Element(f"<title>{title}</title>"))
    return m.get_root().render()
