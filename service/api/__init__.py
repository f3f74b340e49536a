"""The HTTP layer: routers, dependencies, and the one place domain errors become HTTP answers."""
