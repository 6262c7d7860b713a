"""The z4j wire protocol, version 2: pure codec, no I/O."""

from .canonical import canonical_bytes, canonical_text
from .close_codes import (
    BACKOFF_POLICIES,
    BackoffClass,
    BackoffPolicy,
    CloseCode,
    classify_close,
    classify_error_frame,
    classify_http_status,
    describe_close,
)
from .errors import FrameTooLargeError, ProtocolError, ProtocolVersionError, ReplayError, SignatureError
from .frames import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_EVENTS_PER_BATCH,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_TEXT,
    SIGNED_TYPES,
    Frame,
    FrameType,
    encode_unsigned,
    new_frame_id,
    new_nonce,
    parse_frame,
    parse_timestamp,
    utc_now_text,
)
from .keys import (
    decode_hmac_secret,
    deployment_id,
    derive_project_secret,
    encode_hmac_secret,
    purge_token,
    require_key_length,
    token_digest,
)
from .signing import ReplayGuard, SessionBinding, Signer, Verifier, compute_hmac

__all__ = [name for name in dir() if not name.startswith("_")]
