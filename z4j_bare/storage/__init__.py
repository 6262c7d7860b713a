"""The storage layer's parts, behind one facade: ``z4j_bare.buffer.BufferStore``.

The runtime, the engines and the command channel use the facade only. Two parts are public to
the layers above as well: ``location`` (where buffers live: ``doctor``, and engines that find a
family buffer themselves) and ``status`` (the read-only view ``doctor`` and ``z4j-bare status``
use). The parts import only the standard library, ``z4j_bare.logs`` and each other.
docs/architecture.md, "Storage", maps them.
"""
