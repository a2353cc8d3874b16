"""fleetd.config: option precedence, value parsing and error messages."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from fleetd.config import (
    Config,
    ConfigError,
    load_config,
    parse_metadata,
    read_config_file,
    read_machine_id,
)

Conf = Callable[..., str]


@pytest.fixture
def conf(tmp_path: pathlib.Path) -> Conf:
    """Write a fleet.conf with the given lines; return its path."""

    def write(*lines: str) -> str:
        p = tmp_path / "fleet.conf"
        p.write_text("\n".join(lines) + "\n")
        return str(p)

    return write


def load(config_path: str, *flags: str, **env: str) -> Config:
    cfg, _ = load_config(["--config", config_path, *flags], env)
    return cfg


# --- precedence ----------------------------------------------------------------------------


def test_defaults_apply_with_empty_file_and_environment(conf: Conf) -> None:
    cfg = load(conf())
    assert cfg == Config()
    assert cfg.agent_ttl == 4.0
    assert cfg.etcd_servers == ["http://127.0.0.1:2379"]
    assert cfg.etcd_key_prefix == "/_coreos.com/fleet/"


@pytest.mark.parametrize(("file_val", "env_val", "flag_val", "expected"), [
    pytest.param(None, None, None, "default", id="default"),
    pytest.param("file", None, None, "file", id="file_over_default"),
    pytest.param("file", "env", None, "env", id="env_over_file"),
    pytest.param(None, "env", None, "env", id="env_over_default"),
    pytest.param("file", "env", "flag", "flag", id="flag_over_env_and_file"),
    pytest.param("file", None, "flag", "flag", id="flag_over_file"),
])
def test_precedence_is_flags_then_env_then_file_then_defaults(
        conf: Conf, file_val: str | None, env_val: str | None, flag_val: str | None,
        expected: str) -> None:
    path = conf(*([f"public_ip={file_val}"] if file_val else []))
    env = {"FLEET_PUBLIC_IP": env_val} if env_val else {}
    flags = ["--public_ip", flag_val] if flag_val else []
    cfg, _ = load_config(["--config", path, *flags], env)
    assert cfg.public_ip == ("" if expected == "default" else expected)


def test_precedence_is_per_option(conf: Conf) -> None:
    path = conf("agent_ttl=20", "etcd_key_prefix=/from-file/", "public_ip=1.1.1.1")
    cfg, _ = load_config(["--config", path, "--agent_ttl", "30"],
                         {"FLEET_ETCD_KEY_PREFIX": "/from-env/"})
    assert (cfg.agent_ttl, cfg.etcd_key_prefix, cfg.public_ip) == (30.0, "/from-env/", "1.1.1.1")


def test_fleet_config_environment_names_the_config_file(conf: Conf) -> None:
    path = conf("public_ip=10.0.0.9")
    cfg, _ = load_config([], {"FLEET_CONFIG": path})
    assert cfg.public_ip == "10.0.0.9"


def test_config_flag_wins_over_fleet_config_environment(conf: Conf, tmp_path: pathlib.Path) -> None:
    path = conf("public_ip=10.0.0.9")
    other = tmp_path / "other.conf"
    other.write_text("public_ip=10.0.0.1\n")
    cfg, _ = load_config(["--config", path], {"FLEET_CONFIG": str(other)})
    assert cfg.public_ip == "10.0.0.9"


def test_unrelated_environment_is_ignored(conf: Conf) -> None:
    cfg = load(conf(), FLEET_NOT_AN_OPTION="x", PUBLIC_IP="9.9.9.9", fleet_public_ip="8.8.8.8")
    assert cfg.public_ip == ""


@pytest.mark.parametrize("flag", ["--agent-ttl", "--agent_ttl"])
def test_dashed_and_underscored_flags_are_equivalent(conf: Conf, flag: str) -> None:
    assert load(conf(), flag, "7").agent_ttl == 7.0


def test_dashed_flag_for_multiword_option(conf: Conf) -> None:
    cfg = load(conf(), "--etcd-key-prefix", "/x/", "--disable-engine", "true")
    assert cfg.etcd_key_prefix == "/x/"
    assert cfg.disable_engine is True


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "seconds"), [
    ("10", 10.0),
    ("10s", 10.0),
    ("2.5s", 2.5),
    ("500ms", 0.5),
    ("1m", 60.0),
    ("1h", 3600.0),
    (" 3S ", 3.0),
    ("4.5", 4.5),
])
def test_durations_accept_go_style_suffixes_and_plain_numbers(conf: Conf, raw: str,
                                                              seconds: float) -> None:
    cfg = load(conf(), FLEET_ETCD_REQUEST_TIMEOUT=raw)
    assert cfg.etcd_request_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("option", ["agent_ttl", "engine_reconcile_interval",
                                    "etcd_request_timeout"])
def test_every_duration_option_parses_minutes(conf: Conf, option: str) -> None:
    assert getattr(load(conf(f"{option}=1m")), option) == 60.0


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("1", True), ("yes", True), ("on", True), ("TRUE", True),
    ("false", False), ("0", False), ("no", False), ("off", False), ("", False),
])
def test_booleans(conf: Conf, raw: str, value: bool) -> None:
    cfg = load(conf(), FLEET_SYSTEMD_USER=raw, FLEET_DISABLE_ENGINE=raw)
    assert cfg.systemd_user is value
    assert cfg.disable_engine is value


def test_etcd_servers_are_comma_separated(conf: Conf) -> None:
    cfg = load(conf('etcd_servers="http://a:2379, http://b:2379,"'))
    assert cfg.etcd_servers == ["http://a:2379", "http://b:2379"]


def test_verbosity_is_an_integer(conf: Conf) -> None:
    assert load(conf(), "--verbosity", "3").verbosity == 3


def test_metadata_from_flag(conf: Conf) -> None:
    assert load(conf(), "--metadata", "a=b,c=d").metadata == {"a": "b", "c": "d"}


@pytest.mark.parametrize(("raw", "parsed"), [
    ("a=b,c=d", {"a": "b", "c": "d"}),
    ("region=us-east", {"region": "us-east"}),
    (" a = b , c=d ,", {"a": "b", "c": "d"}),
    ("", {}),
    (",,", {}),
    ("a=b=c", {"a": "b=c"}),
    ("a=1,a=2", {"a": "2"}),
])
def test_parse_metadata(raw: str, parsed: dict[str, str]) -> None:
    assert parse_metadata(raw) == parsed


@pytest.mark.parametrize("raw", ["a", "a=", "=b", "a=b,c", "a=b, =d"])
def test_parse_metadata_rejects_items_that_are_not_key_value(raw: str) -> None:
    with pytest.raises(ValueError, match="metadata item"):
        parse_metadata(raw)


# --- config file ---------------------------------------------------------------------------


def test_read_config_file_skips_comments_blanks_and_sections(conf: Conf) -> None:
    path = conf("# comment", "; another", "", "[fleet]", "  public_ip = 1.2.3.4  ",
                'metadata="a=b"', "etcd_key_prefix=/p/")
    assert read_config_file(path) == {"public_ip": "1.2.3.4", "metadata": "a=b",
                                      "etcd_key_prefix": "/p/"}


def test_read_config_file_rejects_unknown_option_with_file_and_line(conf: Conf) -> None:
    path = conf("public_ip=1.2.3.4", "bogus_option=1")
    with pytest.raises(ConfigError) as e:
        read_config_file(path)
    assert "bogus_option" in str(e.value)
    assert f"{path}:2" in str(e.value)


def test_read_config_file_rejects_line_without_equals(conf: Conf) -> None:
    path = conf("public_ip")
    with pytest.raises(ConfigError, match=r":1: expected option=value"):
        read_config_file(path)


def test_unknown_option_in_file_fails_load_config(conf: Conf) -> None:
    path = conf("agent_tll=10")
    with pytest.raises(ConfigError, match=r"unknown option 'agent_tll'") as e:
        load(path)
    assert path in str(e.value)


# --- errors name option and source ---------------------------------------------------------


@pytest.mark.parametrize(("file_lines", "flags", "env", "option", "source"), [
    pytest.param(["metadata=a=b,c"], [], {}, "metadata", "fleet.conf", id="metadata_file"),
    pytest.param([], ["--metadata", "nokey"], {}, "metadata", "--metadata", id="metadata_flag"),
    pytest.param([], [], {"FLEET_METADATA": "x"}, "metadata", "FLEET_METADATA",
                 id="metadata_env"),
    pytest.param(["agent_ttl=ten"], [], {}, "agent_ttl", "fleet.conf", id="duration_file"),
    pytest.param([], [], {"FLEET_AGENT_TTL": "10x"}, "agent_ttl", "FLEET_AGENT_TTL",
                 id="duration_env"),
    pytest.param([], ["--engine-reconcile-interval", "soon"], {}, "engine_reconcile_interval",
                 "--engine_reconcile_interval", id="duration_flag"),
    pytest.param([], [], {"FLEET_SYSTEMD_USER": "maybe"}, "systemd_user",
                 "FLEET_SYSTEMD_USER", id="boolean_env"),
    pytest.param([], ["--verbosity", "loud"], {}, "verbosity", "--verbosity",
                 id="integer_flag"),
])
def test_invalid_value_error_names_option_and_source(
        conf: Conf, file_lines: list[str], flags: list[str], env: dict[str, str],
        option: str, source: str) -> None:
    path = conf(*file_lines)
    with pytest.raises(ConfigError) as e:
        load_config(["--config", path, *flags], env)
    msg = str(e.value)
    assert option in msg
    assert source in msg


def test_invalid_value_error_is_a_value_error(conf: Conf) -> None:
    with pytest.raises(ValueError):
        load(conf(), FLEET_AGENT_TTL="x")


@pytest.mark.parametrize("ttl", ["1", "1.9", "0", "500ms"])
def test_agent_ttl_below_two_seconds_is_rejected(conf: Conf, ttl: str) -> None:
    with pytest.raises(ConfigError, match="agent_ttl"):
        load(conf(), "--agent_ttl", ttl)


def test_agent_ttl_below_two_seconds_error_names_the_source(conf: Conf) -> None:
    with pytest.raises(ConfigError) as e:
        load(conf(), FLEET_AGENT_TTL="1")
    assert "FLEET_AGENT_TTL" in str(e.value)


DURATION_OPTIONS = ["agent_ttl", "engine_reconcile_interval", "etcd_request_timeout"]


@pytest.mark.parametrize("option", DURATION_OPTIONS)
def test_negative_infinite_duration_is_rejected(conf: Conf, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        load(conf(), f"--{option}=-inf")


@pytest.mark.parametrize("raw", ["nan", "inf"])
@pytest.mark.parametrize("option", DURATION_OPTIONS)
def test_non_finite_durations_are_rejected(conf: Conf, option: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=option):
        load(conf(), f"--{option}={raw}")


def test_agent_ttl_of_four_seconds_is_accepted(conf: Conf) -> None:
    cfg = load(conf(), "--agent_ttl", "4s")
    assert cfg.agent_ttl == 4.0
    assert cfg.agent_ttl_s() == 4


def test_agent_ttl_too_short_for_the_fence_is_rejected_with_the_reason(conf: Conf) -> None:
    with pytest.raises(ConfigError, match=r"agent_ttl must be at least 4s, got 3s.*renewal"):
        load(conf(), "--agent_ttl", "3s")


@pytest.mark.parametrize(("env", "option"), [
    ({"FLEET_ETCD_SERVERS": ""}, "etcd_servers"),
    ({"FLEET_ETCD_SERVERS": " , "}, "etcd_servers"),
    ({"FLEET_ENGINE_RECONCILE_INTERVAL": "0"}, "engine_reconcile_interval"),
    ({"FLEET_ETCD_REQUEST_TIMEOUT": "0s"}, "etcd_request_timeout"),
])
def test_validation_errors_name_the_option(conf: Conf, env: dict[str, str], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        load(conf(), **env)


def test_missing_config_file_raises_config_error_naming_it(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError) as e:
        load_config(["--config", missing], {})
    assert missing in str(e.value)
    assert "cannot read config file" in str(e.value)


def test_missing_config_file_from_environment_raises(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match=r"nope\.conf"):
        load_config([], {"FLEET_CONFIG": missing})


def test_load_config_returns_parsed_args(conf: Conf) -> None:
    path = conf()
    _, args = load_config(["--config", path, "--version"], {})
    assert args.version is True
    assert args.config == path


# --- machine id ----------------------------------------------------------------------------


def test_read_machine_id_from_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "machine-id"
    f.write_text("0123456789abcdef0123456789abcdef\n")
    cfg = Config(machine_id_file=str(f))
    assert read_machine_id(cfg) == "0123456789abcdef0123456789abcdef"


def test_read_machine_id_override_wins_over_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "machine-id"
    f.write_text("fromfile\n")
    cfg = Config(machine_id=" override ", machine_id_file=str(f))
    assert read_machine_id(cfg) == "override"


def test_read_machine_id_override_needs_no_file(tmp_path: pathlib.Path) -> None:
    cfg = Config(machine_id="abc", machine_id_file=str(tmp_path / "absent"))
    assert read_machine_id(cfg) == "abc"


def test_read_machine_id_from_flag_via_load_config(conf: Conf) -> None:
    cfg = load(conf(), "--machine-id", "m1")
    assert read_machine_id(cfg) == "m1"


def test_read_machine_id_missing_file_raises_naming_it(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match="absent"):
        read_machine_id(Config(machine_id_file=missing))


def test_read_machine_id_empty_file_raises(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "machine-id"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_machine_id(Config(machine_id_file=str(f)))
