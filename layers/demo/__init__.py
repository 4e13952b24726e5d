"""The demo city (Haimen) and synthetic data (the synthetic year, the LA 311 pipeline). May use every
area: it is the top of layers/."""
