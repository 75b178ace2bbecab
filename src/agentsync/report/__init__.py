"""Choosing a strategy: run a comparison matrix (``compare``), report it (CSV, plots, Markdown,
HTML), and predict per-step costs from an α–β network model (``advise``)."""
