"""Use cases: what a user can ask of mlxctl, as functions that return values and never
print. The CLI formats their results; the controller's admin API (mlxctl.admin) serves
them with its own context."""
