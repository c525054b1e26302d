"""Presentation: per-service status rows, plan and outcome text, the versioned JSON stream."""
