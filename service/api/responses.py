"""Response pieces the routes share: the error answers each route documents in the OpenAPI schema."""

from __future__ import annotations

from service.schemas import ErrorBody

# Every route that takes an upload can answer these (service.api.errors maps the domain errors).
ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 413, 415, 422, 503)}
