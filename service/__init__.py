"""The liverseg inference service. Importing this package must not import FastAPI."""
