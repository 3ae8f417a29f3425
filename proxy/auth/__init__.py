"""Client authentication for dpproxy (SCRAM-SHA-256, SASLprep)."""
