"""Models mlxctl builds itself: GGUF conversion and the offline demo model."""
