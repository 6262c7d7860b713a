"""The framework adapter for apps without a web framework (plain scripts, bare workers)."""

from __future__ import annotations


class BareFrameworkAdapter:
    """Names the host in hello (``framework``) and in the worker id (``bare-<pid>-<ms>``).

    A web-framework integration would subclass this to read its settings; a plain script or
    worker uses it as is.
    """

    name = "bare"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
