"""`python -m recycle_engine` runs the command line."""

from __future__ import annotations

from recycle_engine.cli import main

if __name__ == "__main__":
    main()
