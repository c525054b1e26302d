"""Use cases over the core, shared by the CLI and an admin API: they return values, never print."""
