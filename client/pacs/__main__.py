"""`python -m client.pacs`: the same as the `liverseg-pacs` console script."""

from __future__ import annotations

from client.pacs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
