"""Tests for z4j_bare.config: precedence, parsers, error messages, secret masking, URL rules."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from z4j_bare.config import (
    OPTIONS,
    OPTIONS_BY_NAME,
    Config,
    ConfigError,
    Secret,
    options_help_text,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text())["hmac_secret_decoding"]

TOKEN = "tok_Sup3rSecretBearerValue_xyz"
HMAC = "8wju2tRUuNkVXAcDJH4wM6sFL0E8-smGhfiLl0A9mEs="
HMAC_HEX = "f308eedad454b8d9155c0703247e3033ab052f413cfac98685f88b97403d984b"
BASE_ENV = {
    "Z4J_BRAIN_URL": "https://brain.example.com",
    "Z4J_TOKEN": TOKEN,
    "Z4J_HMAC_SECRET": HMAC,
    "Z4J_PROJECT_ID": "payments",
}


def env(**overrides: str) -> dict[str, str]:
    return {**BASE_ENV, **overrides}


def error_of(env_map: dict[str, str], **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.resolve(env=env_map, **kwargs)
    return info.value


def assert_names_option(err: ConfigError, name: str) -> None:
    text = str(err)
    opt = OPTIONS_BY_NAME[name]
    assert name in text
    assert opt.env in text
    assert "Fix:" in text
    assert TOKEN not in text and HMAC not in text and HMAC.rstrip("=") not in text


# ------------------------------------------------------------------ the table itself


def test_options_table_is_read_from_the_config_fields():
    # Each default is written once, on its Config field; OPTIONS is derived from the fields.
    fields = {f.name: f for f in dataclasses.fields(Config) if f.init}
    assert [o.name for o in OPTIONS] == list(fields)
    for opt in OPTIONS:
        assert opt.env == "Z4J_" + opt.name.upper()
        f = fields[opt.name]
        if opt.required:
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        elif f.default_factory is not dataclasses.MISSING:
            assert f.default_factory() == opt.default
        else:
            assert f.default == opt.default
    assert {o.name for o in OPTIONS if not o.env_allowed} == {"dev_mode", "tls_verify"}
    assert {o.name for o in OPTIONS if o.required} == {"brain_url", "token", "hmac_secret", "project_id"}


def test_defaults_when_only_required_given():
    cfg = Config.resolve(env=BASE_ENV)
    for opt in OPTIONS:
        if not opt.required:
            assert getattr(cfg, opt.name) == opt.default, opt.name
            assert cfg.source_of(opt.name) == "default"
        else:
            assert cfg.source_of(opt.name) == "env"
    assert cfg.buffer_max_events == 100_000 and cfg.buffer_max_bytes == 268_435_456
    assert cfg.transport == "auto" and cfg.tls_verify is True and cfg.orchestrated is None


def test_help_text_and_module_doc_cover_every_option():
    import z4j_bare.config as mod

    text = options_help_text()
    for opt in OPTIONS:
        assert opt.name in text and opt.env in text
    assert "Precedence" in mod.__doc__ and "environment" in mod.__doc__


# ------------------------------------------------------------------ precedence


@pytest.mark.parametrize(
    ("name", "env_text", "env_value", "kwarg"),
    [
        ("heartbeat_seconds", "20", 20.0, 30.5),
        ("command_workers", "8", 8, 3),
        ("environment", "staging", "staging", "qa"),
        ("strict_mode", "yes", True, False),
        ("transport", "ws", "ws", "auto"),
        ("buffer_max_events", "5000", 5000, 2000),
        ("redaction_extra_key_patterns", "a,b", ("a", "b"), ["c"]),
        ("tags", "k=v", {"k": "v"}, {"x": "y"}),
        ("brain_url", "https://env.example.com", "https://env.example.com", "https://kw.example.com"),
        ("project_id", "from-env", "from-env", "from-kwarg"),
    ],
)
def test_kwarg_beats_env_beats_default(name, env_text, env_value, kwarg):
    opt = OPTIONS_BY_NAME[name]
    e = env(**{opt.env: env_text})
    from_env = Config.resolve(env=e)
    assert getattr(from_env, name) == env_value
    assert from_env.source_of(name) == "env"
    from_kwarg = Config.resolve(env=e, **{name: kwarg})
    expected = tuple(kwarg) if isinstance(kwarg, list) else kwarg
    assert getattr(from_kwarg, name) == expected
    assert from_kwarg.source_of(name) == "kwarg"
    if not opt.required:
        plain = Config.resolve(env=BASE_ENV)
        assert getattr(plain, name) == opt.default
        assert plain.source_of(name) == "default"


def test_none_kwarg_means_not_given():
    cfg = Config.resolve(env=env(Z4J_COMMAND_WORKERS="7"), command_workers=None, agent_name=None)
    assert cfg.command_workers == 7 and cfg.source_of("command_workers") == "env"
    assert cfg.agent_name is None and cfg.source_of("agent_name") == "default"


def test_empty_string_kwarg_forces_default_and_blocks_env():
    cfg = Config.resolve(env=env(Z4J_ENVIRONMENT="staging", Z4J_TAGS="a=b"), environment="", tags="")
    assert cfg.environment == "production" and cfg.tags == {}
    assert cfg.source_of("environment") == "kwarg"


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_env_counts_as_unset(blank):
    cfg = Config.resolve(env=env(Z4J_HEARTBEAT_SECONDS=blank, Z4J_STRICT_MODE=blank, Z4J_BUFFER_PATH=blank))
    assert cfg.heartbeat_seconds == 10.0 and cfg.strict_mode is False and cfg.buffer_path is None
    assert cfg.source_of("heartbeat_seconds") == "default"


def test_env_defaults_to_os_environ(monkeypatch):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("Z4J_AGENT_NAME", "from-os-environ")
    cfg = Config.resolve()
    assert cfg.agent_name == "from-os-environ" and cfg.source_of("agent_name") == "env"


def test_unknown_kwarg_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="heartbeat") as info:
        Config.resolve(env=BASE_ENV, heartbeat=5)
    assert "heartbeat_seconds" in str(info.value)  # the did-you-mean hint
    with pytest.raises(TypeError, match="bogus_option"):
        Config.resolve(env=BASE_ENV, bogus_option=1)


def test_source_of_unknown_name():
    with pytest.raises(KeyError, match="nope"):
        Config.resolve(env=BASE_ENV).source_of("nope")


# ------------------------------------------------------------------ parsers


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_bool_true_spellings(text):
    assert Config.resolve(env=env(Z4J_STRICT_MODE=text)).strict_mode is True


@pytest.mark.parametrize("text", ["0", "false", "False", "NO", "off"])
def test_bool_false_spellings(text):
    assert Config.resolve(env=env(Z4J_AUTOSTART=text)).autostart is False


@pytest.mark.parametrize("name", [o.name for o in OPTIONS if o.kind == "bool" and o.env_allowed])
@pytest.mark.parametrize("text", ["maybe", "2", "tru", "enabled"])
def test_bool_garbage_is_an_error(name, text):
    opt = OPTIONS_BY_NAME[name]
    err = error_of(env(**{opt.env: text}))
    assert_names_option(err, name)
    assert repr(text) in str(err) and "true" in str(err)
    assert err.option == name and err.env == opt.env


def test_bool_kwarg_wrong_type():
    err = error_of(BASE_ENV, strict_mode=3)
    assert_names_option(err, "strict_mode")
    assert "strict_mode=" in str(err)


def test_orchestrated_is_tristate():
    assert Config.resolve(env=BASE_ENV).orchestrated is None
    assert Config.resolve(env=env(Z4J_ORCHESTRATED="1")).orchestrated is True
    assert Config.resolve(env=env(Z4J_ORCHESTRATED="off")).orchestrated is False


NUMERIC = [o for o in OPTIONS if o.kind in ("int", "float")]


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.name)
def test_numeric_bounds_from_env_and_kwarg(opt):
    if opt.minimum is not None:
        at_min = int(opt.minimum) if opt.kind == "int" else float(opt.minimum)
        assert getattr(Config.resolve(env=env(**{opt.env: str(at_min)})), opt.name) == at_min
        below = at_min - 1 if opt.kind == "int" else at_min - 0.05
        err = error_of(env(**{opt.env: str(below)}))
        assert_names_option(err, opt.name)
        assert "unset it to use the default" in str(err)
        err = error_of(BASE_ENV, **{opt.name: below})
        assert_names_option(err, opt.name)
        assert f"{opt.name}=" in str(err)
    if opt.maximum is not None:
        above = int(opt.maximum) + 1
        err = error_of(env(**{opt.env: str(above)}))
        assert_names_option(err, opt.name)
        assert str(int(opt.maximum)) in str(err)


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.name)
@pytest.mark.parametrize("text", ["abc", "12abc", "", "nan", "inf"])
def test_numeric_garbage(opt, text):
    if text == "":
        assert getattr(Config.resolve(env=env(**{opt.env: text})), opt.name) == opt.default
        return
    err = error_of(env(**{opt.env: text}))
    assert_names_option(err, opt.name)
    assert repr(text) in str(err)


def test_int_rejects_floats_and_bools_but_float_accepts_ints():
    assert_names_option(error_of(env(Z4J_COMMAND_WORKERS="2.5")), "command_workers")
    assert_names_option(error_of(BASE_ENV, command_workers=2.0), "command_workers")
    assert_names_option(error_of(BASE_ENV, command_workers=True), "command_workers")
    assert_names_option(error_of(BASE_ENV, heartbeat_seconds=True), "heartbeat_seconds")
    cfg = Config.resolve(env=env(Z4J_BUFFER_MAX_EVENTS="100_000"), heartbeat_seconds=12)
    assert cfg.heartbeat_seconds == 12.0 and isinstance(cfg.heartbeat_seconds, float)
    assert cfg.buffer_max_events == 100_000


def test_buffer_caps_minimums():
    assert_names_option(error_of(env(Z4J_BUFFER_MAX_BYTES=str(1024 * 1024 - 1))), "buffer_max_bytes")
    assert Config.resolve(env=env(Z4J_BUFFER_MAX_BYTES=str(1024 * 1024))).buffer_max_bytes == 1024 * 1024


@pytest.mark.parametrize("name", ["redaction_extra_key_patterns", "redaction_extra_value_patterns"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b", ("a", "b")),
        (" a , b ,, ", ("a", "b")),
        ('["a,b", "c"]', ("a,b", "c")),
        ('  ["x{1,3}"]', ("x{1,3}",)),
        ("[]", ()),
        ("^cust_.*$", ("^cust_.*$",)),
    ],
)
def test_list_env_formats(name, text, expected):
    cfg = Config.resolve(env=env(**{OPTIONS_BY_NAME[name].env: text}))
    assert getattr(cfg, name) == expected
    assert isinstance(getattr(cfg, name), tuple)


@pytest.mark.parametrize(("kwarg", "expected"), [(["a", "b"], ("a", "b")), (("a",), ("a",)),
                                                 ("a,b", ("a", "b")), ('["a,b"]', ("a,b",))])
def test_list_kwarg_forms(kwarg, expected):
    cfg = Config.resolve(env=BASE_ENV, redaction_extra_value_patterns=kwarg)
    assert cfg.redaction_extra_value_patterns == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('["a", ', "not valid JSON"),
        ('[1, "a"]', "int item"),
        ("(unclosed", "invalid regular expression"),
        ('{"a": 1}', None),  # not a '[' value: treated as CSV, and '{"a": 1}' is a valid regex
    ],
)
def test_list_errors(value, fragment):
    e = env(Z4J_REDACTION_EXTRA_KEY_PATTERNS=value)
    if fragment is None:
        assert Config.resolve(env=e).redaction_extra_key_patterns == ('{"a": 1}',)
        return
    err = error_of(e)
    assert_names_option(err, "redaction_extra_key_patterns")
    assert fragment in str(err)


def test_list_kwarg_wrong_type():
    assert_names_option(error_of(BASE_ENV, redaction_extra_key_patterns=5), "redaction_extra_key_patterns")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("team=payments,tier=1", {"team": "payments", "tier": "1"}),
        (" team = payments , ", {"team": "payments"}),
        ('{"team": "payments", "tier": 1}', {"team": "payments", "tier": "1"}),
        ("k=a=b", {"k": "a=b"}),
    ],
)
def test_tags_env(text, expected):
    cfg = Config.resolve(env=env(Z4J_TAGS=text))
    assert cfg.tags == expected
    assert json.loads(json.dumps(cfg.tags)) == expected


@pytest.mark.parametrize("text", ["team", "=x", '{"a": [1]}', '["a"]', "{broken", "bad key=1"])
def test_tags_errors(text):
    err = error_of(env(Z4J_TAGS=text))
    assert_names_option(err, "tags")


def test_tags_kwarg_dict_and_read_only():
    cfg = Config.resolve(env=BASE_ENV, tags={"team": "core", "n": 3})
    assert cfg.tags == {"team": "core", "n": "3"}
    with pytest.raises(TypeError, match="read-only"):
        cfg.tags["x"] = "y"
    with pytest.raises(TypeError):
        cfg.tags.update(x="y")


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("ws", "ws"), ("WS", "ws"), (" Auto ", "auto"),
                                            ("longpoll", "longpoll"), ("long-poll", "longpoll"), ("LONG_POLL", "longpoll")])
def test_transport_choices(text, expected):
    assert Config.resolve(env=env(Z4J_TRANSPORT=text)).transport == expected


def test_transport_longpoll_as_a_keyword():
    assert Config.resolve(env=BASE_ENV, transport="longpoll").transport == "longpoll"


def test_transport_unknown():
    err = error_of(env(Z4J_TRANSPORT="grpc"))
    assert_names_option(err, "transport")
    assert "auto, ws, longpoll" in str(err)


@pytest.mark.parametrize("role", ["web", "task", "scheduler", "beat", "other"])
def test_worker_role_ok(role):
    assert Config.resolve(env=env(Z4J_WORKER_ROLE=role.upper())).worker_role == role


def test_worker_role_bad():
    assert_names_option(error_of(env(Z4J_WORKER_ROLE="janitor")), "worker_role")


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("project_id", "x", True), ("project_id", "p" * 63, True), ("project_id", "p" * 64, False),
    ("agent_name", "n" * 64, True), ("agent_name", "n" * 65, False),
    ("agent_name", "tab\there", False),
])
def test_string_length_rules(name, value, ok):
    e = env(**{OPTIONS_BY_NAME[name].env: value})
    if ok:
        assert getattr(Config.resolve(env=e), name) == value
    else:
        assert_names_option(error_of(e), name)


def test_blank_project_id_kwarg_is_refused():
    err = error_of(BASE_ENV, project_id="   ")
    assert_names_option(err, "project_id")
    assert "1..63 characters" in str(err)


# ------------------------------------------------------------------ paths


def test_buffer_path_from_env_works(tmp_path):
    target = tmp_path / "buf" / "events.sqlite"
    cfg = Config.resolve(env=env(Z4J_BUFFER_PATH=str(target), Z4J_HOME=str(tmp_path / "home")))
    assert cfg.buffer_path == target and isinstance(cfg.buffer_path, Path)
    assert cfg.home == tmp_path / "home" and cfg.home_dir == tmp_path / "home"
    assert cfg.source_of("buffer_path") == "env"


def test_paths_expand_user_and_home_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = Config.resolve(env=env(Z4J_BUFFER_PATH="~/b.sqlite"))
    assert cfg.buffer_path == tmp_path / "b.sqlite"
    assert cfg.home is None and cfg.home_dir == tmp_path / ".z4j"
    assert Config.resolve(env=BASE_ENV, buffer_path=tmp_path / "x").buffer_path == tmp_path / "x"


def test_ca_bundle_must_exist(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Config.resolve(env=env(Z4J_CA_BUNDLE=str(pem))).ca_bundle == pem
    err = error_of(env(Z4J_CA_BUNDLE=str(tmp_path / "missing.pem")))
    assert_names_option(err, "ca_bundle")
    assert "missing.pem" in str(err) and "existing" in str(err)
    assert_names_option(error_of(BASE_ENV, ca_bundle=tmp_path), "ca_bundle")  # a directory


# ------------------------------------------------------------------ dev_mode / tls_verify


def test_dev_mode_env_is_ignored_with_one_warning():
    with capture_logs() as logs:
        cfg = Config.resolve(env=env(Z4J_DEV_MODE="1", Z4J_BRAIN_URL="https://b.example.com"))
    assert cfg.dev_mode is False and cfg.source_of("dev_mode") == "default"
    warnings = [entry for entry in logs if entry["event"] == "config.dev_mode_env_ignored"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["env_var"] == "Z4J_DEV_MODE"


def test_dev_mode_env_does_not_unlock_plain_http():
    with capture_logs():
        err = error_of(env(Z4J_DEV_MODE="true", Z4J_BRAIN_URL="http://brain.internal:7700"))
    assert_names_option(err, "brain_url")


def test_no_warning_without_dev_mode_env():
    with capture_logs() as logs:
        Config.resolve(env=BASE_ENV, dev_mode=True)
    assert logs == []


def test_tls_verify_off_requires_dev_mode():
    err = error_of(BASE_ENV, tls_verify=False)
    text = str(err)
    assert "tls_verify" in text and "dev_mode=True" in text and "Fix:" in text and "Z4J_TLS_VERIFY" in text
    cfg = Config.resolve(env=BASE_ENV, tls_verify=False, dev_mode=True)
    assert cfg.tls_verify is False and cfg.dev_mode is True


def test_tls_verify_env_is_ignored():
    with capture_logs() as logs:
        cfg = Config.resolve(env=env(Z4J_TLS_VERIFY="0"))
    assert cfg.tls_verify is True
    assert [e["event"] for e in logs] == ["config.tls_verify_env_ignored"]


# ------------------------------------------------------------------ URL rules


@pytest.mark.parametrize(
    ("url", "ws_url"),
    [
        ("https://h", "wss://h/ws/agent"),
        ("https://h/", "wss://h/ws/agent"),
        ("https://h/z4j", "wss://h/z4j/ws/agent"),
        ("https://h/z4j/", "wss://h/z4j/ws/agent"),
        ("HTTPS://h:8443/a/b//", "wss://h:8443/a/b/ws/agent"),
        ("wss://h/z4j", "wss://h/z4j/ws/agent"),
        ("http://localhost:7700", "ws://localhost:7700/ws/agent"),
        ("ws://127.0.0.1:7700/", "ws://127.0.0.1:7700/ws/agent"),
        ("http://[::1]:7700/p", "ws://[::1]:7700/p/ws/agent"),
        ("wss://h/ws/agent", "wss://h/ws/agent"),
        ("https://u:p@h/z4j", "wss://h/z4j/ws/agent"),
    ],
)
def test_ws_url(url, ws_url):
    assert Config.resolve(env=env(Z4J_BRAIN_URL=url)).ws_url == ws_url


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://localhost:7700", True), ("http://LOCALHOST", True), ("http://127.0.0.1", True),
        ("ws://127.9.8.7:1", True), ("http://[::1]:7700", True), ("https://brain.example.com", False),
        ("https://10.0.0.5", False), ("https://localhost.example.com", False),
    ],
)
def test_is_loopback(url, loopback):
    assert Config.resolve(env=env(Z4J_BRAIN_URL=url)).is_loopback is loopback


@pytest.mark.parametrize("url", ["http://brain.internal", "ws://10.0.0.5:7700", "http://localhost.evil.com",
                                 "http://128.0.0.1", "http://0.0.0.0:7700"])
def test_plain_http_refused_for_non_loopback(url):
    err = error_of(env(Z4J_BRAIN_URL=url))
    assert_names_option(err, "brain_url")
    assert "https" in str(err) and "dev_mode=True" in str(err)
    cfg = Config.resolve(env=env(Z4J_BRAIN_URL=url), dev_mode=True)
    assert cfg.dev_mode is True and cfg.ws_url.startswith("ws://")


@pytest.mark.parametrize("url", ["ftp://h", "brain.example.com", "https://", "https:///path", "https://h?x=1",
                                 "https://h#frag", "https://h:notaport", "javascript:alert(1)"])
def test_bad_brain_url(url):
    err = error_of(env(Z4J_BRAIN_URL=url))
    assert_names_option(err, "brain_url")
    assert "https://" in str(err)


def test_brain_url_userinfo_masked_everywhere():
    password = "hunter2-s3cret"
    bad = f"http://admin:{password}@brain.internal/z4j"
    err = error_of(env(Z4J_BRAIN_URL=bad))
    assert password not in str(err) and "admin" not in str(err)
    assert "***@brain.internal" in str(err)
    err = error_of(env(Z4J_BRAIN_URL=f"ftp://admin:{password}@h"))
    assert password not in str(err)
    cfg = Config.resolve(env=env(Z4J_BRAIN_URL=f"https://admin:{password}@brain.example.com"))
    assert password not in repr(cfg) and password not in str(cfg)
    assert password not in json.dumps(cfg.describe())
    assert cfg.ws_url == "wss://brain.example.com/ws/agent"


# ------------------------------------------------------------------ required / aggregation


def test_missing_required_listed_in_one_error():
    err = error_of({})
    text = str(err)
    for opt in OPTIONS:
        if opt.required:
            assert opt.name in text and opt.env in text
    assert "Fix:" in text
    assert len(err.problems) == 4


@pytest.mark.parametrize("name", ["brain_url", "token", "hmac_secret", "project_id"])
def test_each_required_missing(name):
    e = dict(BASE_ENV)
    del e[OPTIONS_BY_NAME[name].env]
    err = error_of(e)
    assert err.option == name and OPTIONS_BY_NAME[name].env in str(err)
    assert [o for o in OPTIONS if o.required and o.name != name and o.env in str(err)] == []


def test_all_problems_reported_together():
    err = error_of({"Z4J_BRAIN_URL": "http://x.example.com", "Z4J_HEARTBEAT_SECONDS": "0",
                    "Z4J_TRANSPORT": "grpc", "Z4J_TOKEN": TOKEN})
    text = str(err)
    for name in ["brain_url", "heartbeat_seconds", "transport", "hmac_secret", "project_id"]:
        assert name in text, name
    assert len(err.problems) == 5 and TOKEN not in text
    assert isinstance(err, ValueError)


def test_resolve_validates_once(monkeypatch):
    import z4j_bare.config as mod

    calls = []
    real = mod._validate
    monkeypatch.setattr(mod, "_validate", lambda raw: calls.append(1) or real(raw))
    cfg = Config.resolve(env=BASE_ENV, heartbeat_seconds=20)
    assert calls == [1] and cfg.heartbeat_seconds == 20.0 and cfg.source_of("heartbeat_seconds") == "kwarg"
    Config(brain_url="https://h", token="t", hmac_secret=HMAC, project_id="p")
    assert calls == [1, 1]


def test_direct_construction_validates():
    cfg = Config(brain_url="https://h", token="t", hmac_secret=HMAC, project_id="p", tags={"a": 1})
    assert isinstance(cfg.token, Secret) and cfg.tags == {"a": "1"} and cfg.key.hex() == HMAC_HEX
    assert cfg.source_of("tags") == "kwarg" and cfg.source_of("heartbeat_seconds") == "default"
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        Config(brain_url="https://h", token="t", hmac_secret=HMAC, project_id="p", heartbeat_seconds=0)


def test_frozen():
    cfg = Config.resolve(env=BASE_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.heartbeat_seconds = 1.0  # type: ignore[misc]
    assert copy.deepcopy(cfg) is cfg
    again = Config.resolve(env=BASE_ENV)
    assert again == cfg and hash(again) == hash(cfg)
    assert dataclasses.replace(cfg, heartbeat_seconds=20).heartbeat_seconds == 20.0


# ------------------------------------------------------------------ HMAC secret vectors


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: repr(v["input"]))
def test_hmac_secret_vectors(vector):
    e = env(Z4J_HMAC_SECRET=vector["input"])
    decoded_ok = vector["ok"] and len(bytes.fromhex(vector["decoded_hex"])) >= 32
    if decoded_ok:
        cfg = Config.resolve(env=e)
        assert cfg.key.hex() == vector["decoded_hex"]
        assert cfg.hmac_secret == Secret(vector["input"].strip())
        return
    err = error_of(e)
    assert "hmac_secret" in str(err) and "Z4J_HMAC_SECRET" in str(err) and "Fix:" in str(err)
    if vector["input"].strip():
        assert vector["input"].strip() not in str(err)
        assert "'***'" in str(err)
    if vector["input"] == "c2hvcnQ=":  # valid base64, but only 5 bytes
        assert "32" in str(err)


def test_hmac_secret_kwarg_as_secret():
    cfg = Config.resolve(env=BASE_ENV, hmac_secret=Secret(HMAC), token=Secret("kw-token"))
    assert cfg.key.hex() == HMAC_HEX and cfg.token.reveal() == "kw-token"


# ------------------------------------------------------------------ secrets never leak


def test_secret_type():
    s = Secret("abc")
    assert repr(s) == str(s) == "Secret('***')" and f"{s}" == "Secret('***')" and "%s" % s == "Secret('***')"  # noqa: UP031
    assert s.reveal() == "abc" and s == Secret("abc") and s != Secret("abd") and s != "abc"
    assert bool(s) and not Secret("") and hash(s) == hash(Secret("abc"))
    assert copy.copy(s) is s and copy.deepcopy(s) is s
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[attr-defined]
    assert not hasattr(s, "__dict__")


def test_secrets_masked_in_repr_describe_and_pickle():
    cfg = Config.resolve(env=BASE_ENV)
    for text in (repr(cfg), str(cfg), json.dumps(cfg.describe()), options_help_text()):
        assert TOKEN not in text and HMAC not in text
    assert "Secret('***')" in repr(cfg)
    rows = {row["name"]: row for row in cfg.describe()}
    assert set(rows) == {o.name for o in OPTIONS}
    assert rows["token"]["value"] == "***" and rows["hmac_secret"]["value"] == "***"
    assert rows["token"] == {"name": "token", "env": "Z4J_TOKEN", "value": "***", "source": "env"}
    assert rows["dev_mode"]["env"] is None
    with pytest.raises(TypeError):
        pickle.dumps(cfg)


def test_secrets_masked_in_errors_and_logs():
    with capture_logs() as logs:
        err = error_of(env(Z4J_DEV_MODE="1", Z4J_HMAC_SECRET="not base64!! " + TOKEN), token=123)
    text = str(err) + repr(err) + repr(logs)
    assert TOKEN not in text and "not base64" not in text
    assert "token" in text and "hmac_secret" in text
