"""Wire codec: interop vectors from the published implementation, signing round trips, replay guard."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import z4j_bare.protocol as protocol_package
from z4j_bare.protocol import (
    EVENT_ZONE,
    BackoffClass,
    FrameType,
    ProtocolError,
    ProtocolVersionError,
    ReplayError,
    ReplayGuard,
    SessionBinding,
    SignatureError,
    Signer,
    Verifier,
    canonical_text,
    classify_close,
    classify_error_frame,
    compute_hmac,
    decode_hmac_secret,
    derive_project_secret,
    encode_hmac_secret,
    parse_frame,
    parse_timestamp,
    purge_token,
    require_key_length,
    utc_now_text,
    utc_text,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text())  # copy of shared/spec/vectors.json
KEY = decode_hmac_secret("8wju2tRUuNkVXAcDJH4wM6sFL0E8-smGhfiLl0A9mEs=")
BINDING = SessionBinding("66666666-7777-4888-9999-aaaaaaaaaaaa", "11111111-2222-4333-8444-555555555555",
                         "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff")


@pytest.mark.parametrize("vector", VECTORS["signing"], ids=lambda v: v["frame_without_hmac"]["type"])
def test_signing_vectors(vector):
    key = decode_hmac_secret(vector["hmac_secret"])
    envelope = {**vector["frame_without_hmac"], **vector["binding"]}
    assert canonical_text(envelope) == vector["canonical"]
    assert compute_hmac(key, envelope) == vector["hmac"]


@pytest.mark.parametrize("vector", VECTORS["signing"], ids=lambda v: v["frame_without_hmac"]["type"])
def test_verifier_accepts_vector_frames_with_fresh_clock(vector):
    frame = vector["frame_without_hmac"]
    sent_at = datetime.fromisoformat(frame["ts"].replace("Z", "+00:00")).timestamp()
    verifier = Verifier(decode_hmac_secret(vector["hmac_secret"]), SessionBinding(**vector["binding"]), clock=lambda: sent_at + 1)
    parsed = verifier.verify(json.dumps({**frame, "hmac": vector["hmac"]}, ensure_ascii=False).encode())
    assert parsed.type == FrameType(frame["type"]) and parsed.id == frame["id"]


def test_event_batch_fast_path_matches_generic_signer():
    events = VECTORS["signing"][1]["frame_without_hmac"]["payload"]["events"]
    signer = Signer(KEY, BINDING, clock=lambda: "2026-11-28T21:04:50.650000Z")
    wire = json.loads(signer.sign_event_batch("ev_4af6e28248d1a1411ebb44ffb0a4a809", [canonical_text(e) for e in events]))
    envelope = {k: v for k, v in wire.items() if k != "hmac"} | BINDING.as_dict()
    assert wire["hmac"] == compute_hmac(KEY, envelope)
    assert wire["payload"]["events"] == events
    # And the receiver accepts it.
    Verifier(KEY, BINDING, clock=lambda: datetime(2026, 11, 28, 21, 4, 51, tzinfo=UTC).timestamp()).verify(json.dumps(wire))


@pytest.mark.parametrize("vector", VECTORS["hmac_secret_decoding"], ids=lambda v: repr(v["input"])[:20])
def test_secret_decoding_vectors(vector):
    if vector["ok"]:
        assert decode_hmac_secret(vector["input"]).hex() == vector["decoded_hex"]
    else:
        with pytest.raises(ValueError):
            decode_hmac_secret(vector["input"])


def test_short_secret_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        require_key_length(decode_hmac_secret("c2hvcnQ="))
    assert "c2hvcnQ" not in str(info.value) and "short" not in str(info.value)


@pytest.mark.parametrize("vector", VECTORS["project_secrets"], ids=lambda v: v["project_id"])
def test_project_secret_derivation(vector):
    assert encode_hmac_secret(derive_project_secret(vector["brain_master_secret"], vector["project_id"])) == vector["hmac_secret"]


@pytest.mark.parametrize("vector", VECTORS["purge_tokens"], ids=lambda v: f"{v['queue']}-{v['depth']}")
def test_purge_tokens(vector):
    assert purge_token(decode_hmac_secret(vector["hmac_secret"]), vector["queue"], vector["depth"]) == vector["token"]


# -- property tests ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _pair():
    return Signer(KEY, BINDING), Verifier(KEY, BINDING)


@settings(max_examples=150, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_sign_verify_round_trip(payload):
    signer, verifier = _pair()
    frame = verifier.verify(signer.sign(FrameType.HEARTBEAT, "hb_1", payload))
    assert frame.payload == json.loads(json.dumps(payload))


@settings(max_examples=150, deadline=None)
@given(payload=st.dictionaries(st.text(min_size=1, max_size=10), json_values, min_size=1, max_size=5), data=st.data())
def test_any_changed_field_is_rejected(payload, data):
    signer, verifier = _pair()
    wire = json.loads(signer.sign(FrameType.AGENT_STATUS, "as_1", payload))
    key = data.draw(st.sampled_from(sorted(wire)))
    if key == "payload":
        victim = data.draw(st.sampled_from(sorted(payload)))
        wire["payload"][victim] = ["tampered", wire["payload"][victim]]
    elif key == "hmac":
        wire["hmac"] = ("0" if wire["hmac"][0] != "0" else "1") + wire["hmac"][1:]
    elif key == "seq":
        wire["seq"] += 1
    elif key == "v":
        wire["v"] = 3
    elif key == "type":
        wire["type"] = "heartbeat"
    else:
        wire[key] = wire[key] + "x"
    with pytest.raises(ProtocolError):
        verifier.verify(json.dumps(wire))


def test_changed_byte_in_signed_bytes_is_rejected():
    signer, verifier = _pair()
    raw = bytearray(signer.sign(FrameType.HEARTBEAT, "hb_1", {"buffer_size": 1, "adapter_health": {}}))
    for i in range(len(raw)):
        mutated = bytes(raw[:i]) + bytes([raw[i] ^ 0x01]) + bytes(raw[i + 1:])
        if mutated == bytes(raw):
            continue
        try:
            frame = verifier.verify(mutated)
        except ProtocolError:
            continue
        # Only a mutation JSON ignores may pass (none exist in compact JSON): fail loudly otherwise.
        pytest.fail(f"mutation at byte {i} accepted: {frame}")


def test_cross_session_and_wrong_key_rejected():
    signer, _ = _pair()
    raw = signer.sign(FrameType.HEARTBEAT, "hb_1", {})
    with pytest.raises(SignatureError):
        Verifier(KEY, SessionBinding(BINDING.agent_id, BINDING.project_id, "other-session")).verify(raw)
    with pytest.raises(SignatureError):
        Verifier(b"k" * 32, BINDING).verify(raw)


def test_replayed_seq_and_nonce_rejected():
    signer, verifier = _pair()
    first = signer.sign(FrameType.HEARTBEAT, "hb_1", {})
    verifier.verify(first)
    with pytest.raises(ReplayError):
        verifier.verify(first)
    # Same nonce with a higher seq (re-signed by an attacker with the key) is still refused.
    guard = ReplayGuard()
    now = utc_now_text()
    guard.check(1, "n1", now)
    with pytest.raises(ReplayError):
        guard.check(2, "n1", now)
    with pytest.raises(ReplayError):
        guard.check(1, "n2", now)


@pytest.mark.parametrize("skew", [-61, 61, 3600])
def test_stale_or_future_timestamp_rejected(skew):
    ts = (datetime.now(UTC) + timedelta(seconds=skew)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with pytest.raises(ReplayError):
        ReplayGuard().check(1, "n", ts)


def test_naive_timestamp_rejected():
    with pytest.raises(ReplayError):
        ReplayGuard().check(1, "n", datetime.now().isoformat())


def test_nan_refused_by_signer():
    signer, _ = _pair()
    with pytest.raises(ValueError):
        signer.sign(FrameType.HEARTBEAT, "hb_1", {"x": math.nan})


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"not json", ProtocolError),
        (b"[]", ProtocolError),
        (b'{"v":3,"type":"hello","id":"x","payload":{}}', ProtocolVersionError),
        (b'{"v":"2","type":"hello","id":"x","payload":{}}', ProtocolError),
        (b'{"v":2,"type":"nope","id":"x","payload":{}}', ProtocolError),
        (b'{"v":2,"type":"hello","id":"","payload":{}}', ProtocolError),
        (b'{"v":2,"type":"hello","id":"' + b"x" * 65 + b'","payload":{}}', ProtocolError),
        (b'{"v":2,"type":"hello","id":"x","payload":[]}', ProtocolError),
    ],
)
def test_strict_envelope_parsing(raw, error):
    with pytest.raises(error):
        parse_frame(raw)


def test_unknown_extra_fields_ignored():
    assert parse_frame(b'{"v":2,"type":"hello","id":"x","payload":{},"extra":1}').id == "x"


def test_unsigned_type_refused_after_handshake():
    _, verifier = _pair()
    with pytest.raises(ProtocolError):
        verifier.verify(b'{"v":2,"type":"hello_ack","id":"x","ts":null,"payload":{}}')


@pytest.mark.parametrize(
    "code, handshake, expected",
    [
        (4401, True, BackoffClass.AUTH), (4403, True, BackoffClass.AUTH), (4403, False, BackoffClass.CONNECTION),
        (4003, False, BackoffClass.AUTH), (4426, True, BackoffClass.INCOMPATIBLE), (4427, False, BackoffClass.INCOMPATIBLE),
        (4400, False, BackoffClass.CONNECTION), (4408, False, BackoffClass.CONNECTION), (4002, False, BackoffClass.CONNECTION),
        (4429, True, BackoffClass.CONNECTION), (1000, False, BackoffClass.CONNECTION), (None, False, BackoffClass.CONNECTION),
    ],
)
def test_close_code_classes(code, handshake, expected):
    assert classify_close(code, during_handshake=handshake) is expected


def test_error_frame_classes():
    assert classify_error_frame("scheduler_upgrade_required", True) is BackoffClass.INCOMPATIBLE
    assert classify_error_frame("something", True) is BackoffClass.PROTOCOL
    assert classify_error_frame("something", False) is None


@pytest.mark.parametrize("ts", [0.0, 1.5, 1_700_000_000.9999997, 1_764_633_600.25, 4e9 + 0.123456])
def test_utc_text_is_the_datetime_spelling_in_both_zones(ts):
    when = datetime.fromtimestamp(ts, UTC)
    assert utc_text(ts) == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert utc_text(ts, EVENT_ZONE) == when.isoformat(timespec="microseconds")
    assert utc_now_text(when) == utc_text(ts)
    assert parse_timestamp(utc_text(ts)) == when


def test_package_exports_names_not_submodules():
    exported = protocol_package.__all__
    assert len(exported) == len(set(exported))
    assert all(hasattr(protocol_package, name) for name in exported)
    assert not [name for name in exported if type(getattr(protocol_package, name)).__name__ == "module"]


def test_utc_timestamp_text_is_written_in_one_place():
    # protocol/timestamps.py is the one definition; everything else calls utc_text / utc_now_text.
    package = Path(protocol_package.__file__).resolve().parent.parent
    spelled = [str(path.relative_to(package)) for path in package.rglob("*.py")
               if 'strftime("%Y-%m-%dT' in path.read_text(encoding="utf-8")]
    assert spelled == ["protocol/timestamps.py"]
