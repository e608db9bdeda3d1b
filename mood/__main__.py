"""``python -m mood``: the command line of :mod:`mood.cli`."""
from .cli import main

raise SystemExit(main())
