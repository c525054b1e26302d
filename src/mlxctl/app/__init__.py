"""Use cases: what a user can ask of mlxctl, as functions that return values and never
print. The CLI formats their results; the coming admin API will serve them."""
