"""``python -m z4j_bare``: the same command line as the ``z4j-bare`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
