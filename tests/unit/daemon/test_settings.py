from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import load_settings


def test_precedence_kwargs_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "labelloop.toml"
    config.write_text('[loop]\nbatch_size = 7\nseed = 3\n[label_studio]\nurl = "http://file:1"\n')
    monkeypatch.setenv("LABELLOOP_LOOP__BATCH_SIZE", "9")
    settings = load_settings(config, label_studio={"url": "http://kwarg:2"})
    assert settings.loop.batch_size == 9  # env beats the file
    assert settings.loop.seed == 3  # the file beats defaults
    assert settings.label_studio.url == "http://kwarg:2"  # kwargs beat everything


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[loop]\nbatch_sise = 7\n')
    with pytest.raises(ConfigError, match=r"loop\.batch_sise"):
        load_settings(config)


def test_validation_errors_never_echo_values(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[label_studio]\napi_kee = "s3cret-token-value"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "s3cret" not in str(info.value)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secret_is_masked_and_placeholders_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    settings = load_settings(label_studio={"api_key": "abc123secret"})
    assert "abc123secret" not in repr(settings)
    assert settings.public_dump()["label_studio"]["api_key"] == "**********"
    assert settings.api_key() == "abc123secret"
    with pytest.raises(ConfigError, match="LABELLOOP_LABEL_STUDIO__API_KEY"):
        load_settings(label_studio={"api_key": "changeme"}).api_key()
    with pytest.raises(ConfigError):
        load_settings().api_key()


def test_a_ray_client_address_is_refused_when_the_settings_load(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[scaleout]\nbackend = "ray"\nray_address = "ray://head:10001"\n')
    with pytest.raises(ConfigError, match=r"(?s)scaleout.*Ray Client.*ray start --address"):
        load_settings(config)
    config.write_text('[scaleout]\nbackend = "ray"\nray_address = "head:6379"\n')
    assert load_settings(config).scaleout.ray_address == "head:6379"


def test_a_bad_setting_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELLOOP_LOOP__FULL_RECONCILE_EVERY", "3")  # a key this version no longer has
    monkeypatch.setenv("LABELLOOP_LOOP__BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    assert "loop.full_reconcile_every (from LABELLOOP_LOOP__FULL_RECONCILE_EVERY): Extra inputs" in message
    assert "loop.batch_size (from LABELLOOP_LOOP__BATCH_SIZE)" in message
