"""Statistics: the case rollups, KPIs, assessment, heat, hot spots, emerging hot spots, alerts and
the monthly bulletin; data/: the assessment rules and the bulletin template. Uses core and cases."""
