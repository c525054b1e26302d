"""Model sources: where a tier's model comes from, and producing it when mlxctl can."""
