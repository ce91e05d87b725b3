"""Built-in backbones, found by scanning this package."""
