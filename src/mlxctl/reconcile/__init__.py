"""The composition root and the loops: one pass, the controller, its triggers and the state lock."""
