"""The storage layer's parts, behind one facade: ``z4j_bare.buffer.BufferStore``.

Nothing outside the storage layer imports these modules except through the facade and the
read-only ``status`` view (``doctor`` and ``z4j-bare status``). They import only the standard
library, ``z4j_bare.logs`` and each other. docs/architecture.md, "Storage", maps them.
"""
