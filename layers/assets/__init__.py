"""Urban assets (部件): the registry with its class catalogs (registry) and imports from GIS files
(imports); data/: the component and event catalogs and import mappings. Uses core."""
