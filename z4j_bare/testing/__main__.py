"""``python -m z4j_bare.testing``: see cli.py."""

from .cli import main

raise SystemExit(main())
