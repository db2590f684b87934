"""The tests' factories (factory_boy) and data builders, one module per app: import from the module."""
