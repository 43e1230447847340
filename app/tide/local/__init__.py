"""Local mode: the whole platform on one machine, no cluster."""
