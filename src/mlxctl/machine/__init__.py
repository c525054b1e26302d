"""Machine effects behind small interfaces: processes, probes, clock, log files, state files."""
