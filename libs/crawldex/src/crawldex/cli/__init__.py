"""The operator command line, `crawldex` (see docs/operations.md, "Operator CLI")."""

from crawldex.cli.main import main

__all__ = ["main"]
