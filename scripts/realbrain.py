#!/usr/bin/env python3
"""Install (cached) and run the published z4j brain for interop tests and benchmarks.

    python3 scripts/realbrain.py install                       # ~/.cache/z4j-bare-interop/brain-venv
    python3 scripts/realbrain.py serve --home /tmp/bh --port 7700 --mint agent-1

Thin entry point: the logic lives in tests/interop/realbrain.py (standard library only), loaded
by path so this works from any interpreter without installing the project.
"""

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "tests" / "interop" / "realbrain.py"
_spec = importlib.util.spec_from_file_location("z4j_interop_realbrain", _PATH)
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)

if __name__ == "__main__":
    raise SystemExit(_module.main())
