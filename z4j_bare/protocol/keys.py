"""Key material: decoding the agent secret, per-project derivation, purge tokens, token digests.

Everything here works on bytes and never logs or formats a key into an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid

MIN_KEY_BYTES = 32
_B64URL = re.compile(r"[A-Za-z0-9_=-]*")
_PROJECT_SECRET_PREFIX = b"z4j-project-secret-v1:"
_TOKEN_DIGEST_SUFFIX = b"z4j-agent-token-v1"


def decode_hmac_secret(text: str) -> bytes:
    """Decode ``Z4J_HMAC_SECRET`` (urlsafe base64, padding optional) to the raw HMAC key.

    Raises ValueError for empty input or characters outside the urlsafe alphabet. The length
    rule (>= 32 bytes) is the caller's: see ``require_key_length``.
    """
    cleaned = (text or "").strip()
    if not cleaned:
        raise ValueError("the HMAC secret is empty")
    if not _B64URL.fullmatch(cleaned):
        raise ValueError("the HMAC secret contains characters outside urlsafe base64 (A-Z a-z 0-9 - _ =)")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.urlsafe_b64decode(cleaned)
    except (ValueError, TypeError):
        raise ValueError("the HMAC secret is not valid urlsafe base64") from None


def require_key_length(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the HMAC secret decodes to {len(key)} bytes; at least {MIN_KEY_BYTES} are required "
            "(use the hmac_secret the brain returned when the agent was created)"
        )
    return key


def derive_project_secret(master_secret: str, project_id: str | uuid.UUID) -> bytes:
    """The brain's per-project key: HMAC(master, prefix + project_uuid.bytes_le)."""
    pid = project_id if isinstance(project_id, uuid.UUID) else uuid.UUID(str(project_id))
    return hmac.new(master_secret.encode("utf-8"), _PROJECT_SECRET_PREFIX + pid.bytes_le, hashlib.sha256).digest()


def encode_hmac_secret(key: bytes) -> str:
    """The text form the brain hands out at agent mint (urlsafe base64 with padding)."""
    return base64.urlsafe_b64encode(key).decode("ascii")


def purge_token(key: bytes, queue: str, depth: int) -> str:
    """Confirm token an operator's purge_queue must carry (protocol.md section 6.5)."""
    return hmac.new(key, f"purge|{queue}|{depth}".encode("utf-8"), hashlib.sha256).hexdigest()


def token_digest(master_secret: str, token: str) -> str:
    """How the brain stores a bearer token: HMAC(master || suffix, token) hex."""
    return hmac.new(master_secret.encode("utf-8") + _TOKEN_DIGEST_SUFFIX, token.encode("utf-8"), hashlib.sha256).hexdigest()


def deployment_id(key: bytes) -> str:
    """A non-reversible short id of the key, naming which buffer files belong together."""
    return hashlib.sha256(key).hexdigest()[:16]
