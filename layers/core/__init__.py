"""Everything the areas share: engine and migrations (db), tables (models), errors, reading GIS files,
users and tokens, cities and admin areas, the unit grid. Imports nothing else of layers/."""
