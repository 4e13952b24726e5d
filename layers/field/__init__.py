"""Field work: inspector reports with photos (reports, photostore), the fast intake, key zones,
patrols and the worklist, on-site verification; data/: field configuration and the demo key zones.
Uses core, cases and analytics (the worklist weighs cells by their hot spots)."""
