"""`python -m service.pacs`: the same as the `liverseg-pacs` console script."""

from __future__ import annotations

from service.pacs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
