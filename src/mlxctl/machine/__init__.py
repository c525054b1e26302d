"""Machine effects behind small interfaces: processes, probes, clock, log pump, state files."""
