"""Publishing: the layer catalog and every area's layer registrations (*_layers.py, found by
catalog.discover), exports, vector tiles and OGC API - Features. Uses core and the areas it publishes."""
