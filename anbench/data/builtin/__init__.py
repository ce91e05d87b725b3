"""Built-in datasets, found by scanning this package."""
