"""Cases: the vocabulary, the class catalog, the one workflow, 并单, the working-time calendar, hotline
imports, the citizen channel, Open311 and the gazetteer; data/: the workflow configuration and the
look-up limits. Uses core."""
