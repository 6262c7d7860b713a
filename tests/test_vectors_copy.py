"""tests/vectors.json is a verbatim copy of the shared interop vectors (when shared/ is beside us)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
SHARED = next((p for p in (HERE.parents[1] / "shared/spec/vectors.json", Path("/work/shared/spec/vectors.json")) if p.exists()), None)


@pytest.mark.skipif(SHARED is None, reason="shared/spec is not beside this checkout")
def test_vectors_copy_matches_shared_spec():
    assert (HERE / "vectors.json").read_bytes() == SHARED.read_bytes(), "refresh tests/vectors.json from shared/spec"
