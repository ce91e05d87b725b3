"""Built-in plugins; every module here registers itself and is found by scanning."""
