from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import load_settings, masked_url


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


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ('["a", " a "]', "class names repeated: a"),
        ('["a", ""]', "a class name is empty"),
        ('["only"]', "one class is no choice"),
    ],
)
def test_class_lists_are_refused_when_a_name_is_empty_repeated_or_alone(
    tmp_path: Path, classes: str, message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[loop]\nclasses = {classes}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_class_names_are_trimmed_and_none_means_from_the_labels(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[loop]\nclasses = [" billing", "fraud "]\n')
    assert load_settings(config).loop.classes == ["billing", "fraud"]
    config.write_text("[loop]\nclasses = []\n")
    assert load_settings(config).loop.classes == []


def test_an_unknown_strategy_is_refused_when_the_settings_load(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[loop]\nstrategy = "nope"\n')
    with pytest.raises(ConfigError, match=r"loop\.strategy: unknown strategy 'nope'; known: default, random"):
        load_settings(config)
    config.write_text('[loop]\nstrategy = "margin"\n')
    assert load_settings(config).loop.strategy == "margin"


def test_label_studio_needs_an_http_url_and_a_positive_project_id(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    for bad in ('url = "ls.example.com"', 'url = "ftp://ls.example.com"', "project_id = 0"):
        config.write_text(f"[label_studio]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"label_studio\.(url|project_id)"):
            load_settings(config)


def test_passwords_in_urls_are_masked_by_config_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELLOOP_STORE__URL", "postgresql://loop:dbs3cret@db.example.com/labelloop")
    monkeypatch.setenv("LABELLOOP_WEBHOOK__PUBLIC_URL", "https://hook:whs3cret@loop.example.com/webhook")
    dump = load_settings().public_dump()
    assert dump["store"]["url"] == "postgresql://loop:***@db.example.com/labelloop"
    assert dump["webhook"]["public_url"] == "https://hook:***@loop.example.com/webhook"
    assert "s3cret" not in str(dump)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hook:whs3cret@loop.example.com/webhook?key=qs3cret&x=1#top", "https://hook:***@loop.example.com/webhook?key=***&x=***#top"),
    ("https://loop.example.com/webhook?token=qs3cret", "https://loop.example.com/webhook?token=***"),
    ("sqlite:////srv/loop/state/labelloop.db", "sqlite:////srv/loop/state/labelloop.db"),  # left as written
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
])
def test_query_values_are_masked_too_and_the_rest_is_left_as_written(url: str, shown: str) -> None:
    """QA: config show printed a key passed in public_url's query string."""
    assert masked_url(url) == shown


def test_a_label_studio_url_with_a_user_or_password_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # httpx sends URL credentials as basic auth, which replaces the token's header: the right
    # token was then reported as refused (401)
    monkeypatch.chdir(tmp_path)
    for url in ("https://ann:lss3cret@ls.example.com", "http://ann@127.0.0.1:8080"):
        monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__URL", url)
        with pytest.raises(ConfigError, match=r"label_studio\.url .*user name or password") as info:
            load_settings()
        assert "s3cret" not in str(info.value) and "ann" not in str(info.value)


@pytest.mark.parametrize("token", ["\u201ctok123456\u201d", "tok12 3456", "tok12\n3456", "tök123456"])
def test_a_token_no_http_header_can_carry_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # a typographic quote from a copied snippet crashed run and sync with a UnicodeEncodeError
    # traceback naming the character; a line break read as "cannot reach Label Studio"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__API_KEY", token)
    with pytest.raises(ConfigError, match="holds a character no token has") as info:
        load_settings().api_key()
    assert "3456" not in str(info.value)
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__API_KEY", "  tok123456\n")  # surrounding blanks are trimmed
    assert load_settings().api_key() == "tok123456"


def test_relative_store_paths_in_the_file_are_taken_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run from another folder with -c, commands used to open (or create) a second store there
    config_dir, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    config_dir.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = config_dir / "labelloop.toml"
    config.write_text('[store]\nurl = "sqlite:///state/loop.db"\ndata_dir = "state"\n')
    store = load_settings(config).store
    assert store.url == f"sqlite:///{config_dir.resolve()}/state/loop.db"
    assert store.data_dir == config_dir.resolve() / "state"
    config.write_text('[store]\nurl = "sqlite:////abs/loop.db"\ndata_dir = "/abs"\n')
    assert load_settings(config).store.url == "sqlite:////abs/loop.db"
    assert load_settings(config).store.data_dir == Path("/abs")
    config.write_text('[store]\nurl = "sqlite:///:memory:"\n')
    assert load_settings(config).store.url == "sqlite:///:memory:"
    # an environment variable or keyword argument stays relative to the working directory
    monkeypatch.setenv("LABELLOOP_STORE__DATA_DIR", "mine")
    assert load_settings(config).store.data_dir == Path("mine")
    assert load_settings(config, store={"url": "sqlite:///x.db"}).store.url == "sqlite:///x.db"


def test_a_list_from_the_environment_that_is_not_json_names_the_variable_and_the_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELLOOP_LOOP__CLASSES", "x,y")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "(environment)" in message and "LABELLOOP_LOOP__CLASSES" in message and "JSON" in message
    assert "labelloop.toml" not in message  # there is no such file here


def test_an_error_from_the_environment_names_the_environment_not_the_file_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "labelloop.toml"
    config.write_text("[loop]\nbatch_size = 10\n")
    monkeypatch.setenv("LABELLOOP_LOOP__BATCH_SIZE", "-5")
    with pytest.raises(ConfigError, match=r"^invalid settings \(environment\): loop\.batch_size \(from LABELLOOP_"):
        load_settings(config)
    monkeypatch.delenv("LABELLOOP_LOOP__BATCH_SIZE")
    config.write_text("[loop]\nbatch_size = -10\n")
    with pytest.raises(ConfigError, match=r"^invalid settings \(.*labelloop\.toml\): loop\.batch_size: Input"):
        load_settings(config)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("LABELLOOP_LOPP__BATCH_SIZE", "unknown setting variable LABELLOOP_LOPP__BATCH_SIZE: .*sections label_studio"),
        ("LABELLOOP_LOOP_BATCH_SIZE", "two underscores: LABELLOOP_LOOP__BATCH_SIZE$"),
        ("labelloop_label_studio_url", "two underscores: LABELLOOP_LABEL_STUDIO__URL$"),
        ("LABELLOOP_BATCH_SIZE", "unknown setting variable LABELLOOP_BATCH_SIZE: a setting's variable is"),
    ],
)
def test_a_variable_that_names_no_section_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, name: str, words: str
) -> None:
    """A typo in the section, or one underscore for two, left the default in force without a word."""
    monkeypatch.setenv(name, "5")
    with pytest.raises(ConfigError, match=words):
        load_settings(None)


def test_the_variables_of_the_cli_and_the_tests_are_not_settings_and_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABELLOOP_LOG_LEVEL", "LABELLOOP_LOG_FORMAT", "LABELLOOP_LS_VENV", "LABELLOOP_SKIP_INTEGRATION"):
        monkeypatch.setenv(name, "1")
    assert load_settings(None).loop.batch_size == 50


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/?token=abc", "http://127.0.0.1:8080/#x", "http://h:1/?"])
def test_a_label_studio_url_with_a_query_is_refused_as_it_would_carry_a_token_to_every_path(url: str) -> None:
    """The API paths were appended after the query: every call went to "/", carrying the token."""
    with pytest.raises(ConfigError, match=r"label_studio\.url: must not carry a query or fragment"):
        load_settings(None, label_studio={"url": url})
    assert load_settings(None, label_studio={"url": "http://127.0.0.1:8080/ls/"}).label_studio.url.endswith("/ls/")


def test_a_blank_token_or_secret_is_no_token_or_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """config show masked an empty token as set, while sync said no token was configured."""
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__API_KEY", "")
    monkeypatch.setenv("LABELLOOP_WEBHOOK__SECRET", "  ")
    settings = load_settings(None)
    assert settings.label_studio.api_key is None and settings.webhook.secret is None
    dumped = settings.public_dump()
    assert dumped["label_studio"]["api_key"] is None and dumped["webhook"]["secret"] is None


def test_a_config_file_others_may_read_with_a_secret_in_it_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "labelloop.toml"
    config.write_text('[label_studio]\napi_key = "s3cret-token-value"\n[webhook]\nsecret = "another-s3cret-value-1"\n')
    config.chmod(0o644)
    with caplog.at_level("WARNING", logger="daemon.settings"):
        load_settings(config)
        load_settings(config)
    warned = [r.getMessage() for r in caplog.records if "other users may read it" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "label_studio.api_key and webhook.secret" in warned[0] and "(mode 0644)" in warned[0]
    assert f"chmod 600 {config}" in warned[0] and "s3cret" not in caplog.text


@pytest.mark.parametrize(("mode", "text"), [
    (0o600, '[label_studio]\napi_key = "s3cret-token-value"\n'),  # only the owner reads it
    (0o644, '[loop]\nbatch_size = 7\n'),  # no secret in it
    (0o644, '[label_studio]\napi_key = ""\n'),  # an empty token is none
])
def test_no_warning_for_a_private_file_or_one_without_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, text: str
) -> None:
    config = tmp_path / "labelloop.toml"
    config.write_text(text)
    config.chmod(mode)
    with caplog.at_level("WARNING", logger="daemon.settings"):
        load_settings(config)
    assert "other users may read it" not in caplog.text
