"""Exceptions raised by the wire codec. None of them ever carries key material."""


class ProtocolError(Exception):
    """A frame is malformed or violates the protocol (close 4400 on the brain side)."""


class ProtocolVersionError(ProtocolError):
    """A frame declares an envelope version other than 2."""


class SignatureError(ProtocolError):
    """HMAC missing or wrong (close 4403 on the brain side)."""


class ReplayError(SignatureError):
    """Sequence, nonce or timestamp check failed: a replayed or stale frame."""


class FrameTooLargeError(ProtocolError):
    """A signed frame exceeds the peer's advertised max_frame_size_bytes."""
