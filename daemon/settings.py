"""Settings: one ``Settings`` object, built once at the edge and passed down.

Precedence: keyword arguments > ``LABELLOOP_*`` environment variables (``__`` nests,
e.g. ``LABELLOOP_LABEL_STUDIO__API_KEY``) > ``labelloop.toml`` > defaults.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from daemon.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "LabelStudioSettings",
    "LoopSettings",
    "ModelSettings",
    "PoolSettings",
    "ScaleoutSettings",
    "Settings",
    "StoreSettings",
    "WebhookSettings",
    "describe_invalid",
    "load_settings",
    "masked_url",
]

log = logging.getLogger(__name__)
DEFAULT_CONFIG_FILE = "labelloop.toml"
_WARNED_FILES: set[Path] = set()  # config files whose readable secrets were already warned about
_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "<your token>", "your-token-here", "xxx"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _blank_to_none(value: object) -> object:
    """An empty secret (``LABELLOOP_LABEL_STUDIO__API_KEY=""``) is no secret: ``config show`` masked it as set
    while ``sync`` said none was configured."""
    return None if isinstance(value, str) and not value.strip() else value


class LabelStudioSettings(_Section):
    url: str = "http://127.0.0.1:8080"
    api_key: SecretStr | None = None  # legacy token or Personal Access Token
    project_id: int | None = Field(default=None, gt=0)  # use this project; None = find or create by title
    project_title: str = Field(default="labelloop", min_length=1, max_length=50)  # Label Studio caps at 50
    text_key: str = "text"
    # the <Choices> tag that holds the classes, for a config with several; None = the config's only one
    choices_name: str | None = Field(default=None, min_length=1)
    timeout_s: float = Field(default=15.0, gt=0)
    max_waiting_tasks: int = Field(default=200, gt=0)  # unlabeled tasks of ours allowed in the queue
    # a store bound to one project refuses a project_id naming another unless this is set: a one-off
    # command with a mistyped id moved the store and marked every waiting task withdrawn (QA)
    allow_project_change: bool = False

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return _blank_to_none(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080")
        if "@" in parts.netloc:  # the client would send it as basic auth, which replaces the token's header
            raise ValueError(
                "must not carry a user name or password (user:password@): Label Studio takes the "
                "token in label_studio.api_key, and basic auth in the URL would replace it"
            )
        if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
            # the API paths were appended after it: every call went to "/" (an HTML page), with the query
            raise ValueError(
                "must not carry a query or fragment (?… or #…): give the server's address, such as "
                "http://127.0.0.1:8080, and the token in label_studio.api_key"
            )
        return url


class LoopSettings(_Section):
    strategy: str = "default"  # a strategies.REGISTRY name; "default" = strategies.DEFAULT_STRATEGY
    batch_size: int = Field(default=50, gt=0)
    control_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)  # random control slice per batch
    classes: list[str] = Field(default_factory=list)  # used when creating a project
    min_new_labels: int = Field(default=10, ge=1)  # retrain after this many new labels
    low_water_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # new batch when queue ≤ this × batch
    sync_interval_s: float = Field(default=10.0, gt=0)
    cycle_interval_s: float = Field(default=30.0, gt=0)
    pull_overlap_s: float = Field(default=120.0, ge=0)  # re-read this much before the watermark
    # re-read every task at start and then at most this often (not every N syncs: with the webhook,
    # each annotation is a sync, and a full read of a large project takes a while)
    full_reconcile_interval_s: float = Field(default=600.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    stop_rule_enabled: bool = True  # pause the queue when models agree with earlier ones (and the control slice)
    stop_kappa: float = Field(default=0.99, gt=0.0, le=1.0)
    stop_window: int = Field(default=3, ge=1)
    stability_sample: int = Field(default=2000, gt=0)  # unlabeled items both models predict
    rerank_enabled: bool = True  # refresh waiting tasks' predictions when a new model arrives
    stale_score_ratio: float = Field(default=0.5, ge=0.0, le=1.0)  # withdraw below this × original score
    # the waiting tasks annotators get next are never withdrawn (someone may have them open, and
    # Label Studio's task locks are invisible to its API): at least the number labeling at once
    rerank_keep_next: int = Field(default=5, ge=0)
    # while classes have no label, the default strategy asks for the items nearest their names
    # (embedded by the pool's encoder; ignored for bring-your-own vectors): strategies/named.py
    use_class_names: bool = True
    # an unlabeled item at least this cosine-close to a labeled one (a re-post, re-cased, a word
    # dropped or a tag added) is set aside: it stays as uncertain as the labeled one was, and in a
    # pool with many such copies they filled 90 % of the batches; 1.0 sets aside only identical vectors
    set_aside_near_copies: bool = True
    near_copy_cosine: float = Field(default=0.97, gt=0.0, le=1.0)
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        if name == "default":
            return name  # every command loads the settings: importing the registry (numpy) only when named
        from strategies import REGISTRY

        if name not in REGISTRY:
            raise ValueError(f"unknown strategy {name!r}; known: default, {', '.join(REGISTRY)}")
        return name

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, names: list[str]) -> list[str]:
        """Names are trimmed; an empty or repeated name, or a single class, is refused (none = from the labels)."""
        trimmed = [name.strip() for name in names]
        if any(not name for name in trimmed):
            raise ValueError("a class name is empty")
        repeated = sorted({name for name in trimmed if trimmed.count(name) > 1})
        if repeated:
            raise ValueError(f"class names repeated: {', '.join(repeated)}")
        if len(trimmed) == 1:
            raise ValueError("one class is no choice: name at least two, or none to take them from the labels")
        return trimmed


class ModelSettings(_Section):
    encoder: str | None = None  # local path or hub id; None = bundled all-MiniLM-L6-v2
    device: str | None = None  # None = cuda when available, else cpu
    # "auto" = bf16 where the hardware computes it natively (AVX512-BF16/AMX CPUs, GPUs), else fp32;
    # bf16 vectors agree with fp32 to a mean cosine of 0.9999+ (bench/encode.py reports the minimum)
    dtype: Literal["fp32", "bf16", "fp16", "auto", "int8"] = "fp32"  # int8: backend "onnx" (or "auto")
    # "onnx" runs an ONNX Runtime export of the encoder on CPU (pip install 'labelloop[onnx]'), cached
    # under <store.data_dir>/onnx; it takes dtype "fp32" (the torch vectors) or "int8" (own cache).
    # "auto": onnx for fp32/int8 on a CPU where onnxruntime is installed (2x torch's speed, the same
    # vectors), torch otherwise (GPUs, bf16/fp16, no onnxruntime, or an encoder that fails to export)
    backend: Literal["auto", "torch", "onnx"] = "auto"
    torch_threads: int | None = Field(default=None, gt=0)  # torch.set_num_threads at startup; None = torch's
    encode_batch_size: int = Field(default=64, gt=0)
    max_length: int = Field(default=256, gt=0)
    hidden_dim: int = Field(default=0, ge=0)
    # "auto": pools of 64k+ rows are first scored by a bfloat16 head where the hardware runs it 2x+
    # faster, and its deeper top re-scored in float32; the shortlist is float32's (daemon/scoring.py)
    scoring_prefilter: Literal["auto", "bfloat16", "off"] = "auto"
    epochs: int = Field(default=200, gt=0)
    cv_folds: int = Field(default=5, ge=2)

    @model_validator(mode="after")
    def _dtype_fits_backend(self) -> ModelSettings:
        if self.backend == "torch" and self.dtype == "int8":
            raise ValueError('dtype "int8" needs backend = "onnx" (torch runs fp32, bf16, fp16 or auto)')
        if self.backend == "onnx" and self.dtype not in ("fp32", "int8"):
            raise ValueError(f'backend "onnx" runs dtype "fp32" or "int8", not "{self.dtype}"')
        if self.backend != "torch" and self.dtype == "int8" and (self.device or "cpu").startswith("cuda"):
            raise ValueError('dtype "int8" runs on ONNX Runtime\'s CPU provider: drop device = "cuda" or use bf16')
        if self.backend == "onnx" and (self.device or "cpu").startswith("cuda"):
            raise ValueError('backend "onnx" runs on the CPU: use backend "torch" (or "auto") with device "cuda"')
        return self


class StoreSettings(_Section):
    url: str = "sqlite:///.labelloop/labelloop.db"
    data_dir: Path = Path(".labelloop")  # embedding cache, lock file
    # how long a write waits for another writer (a large `pool add`) before the run is skipped
    busy_timeout_s: float = Field(default=30.0, gt=0)


class ScaleoutSettings(_Section):
    """Where embedding backfill and pool scoring run; the daemon and its store stay the coordinator."""

    backend: Literal["local", "ray"] = "local"  # "ray" needs: pip install 'labelloop[ray]'
    # None = a private local instance; "auto" or "head:6379" = the cluster this machine is a node of
    # (`ray start --address=head:6379`); Ray Client ("ray://") cannot run Ray Data jobs and is refused
    ray_address: str | None = None
    local_num_cpus: int | None = Field(default=None, gt=0)  # the private instance's CPUs; None = all
    actors: int | None = Field(default=None, gt=0)  # per job; None = one per GPU share, else one per CPU
    gpus_per_actor: float = Field(default=1.0, gt=0)  # requested only when the cluster reports GPUs
    encode_batch_rows: int = Field(default=256, gt=0)  # texts per block and per encoder call on an actor
    embed_job_rows: int = Field(default=100_000, gt=0)  # pool items per Ray embedding job
    score_chunk_rows: int = Field(default=65_536, gt=0)  # candidates an actor scores at once
    vectors: Literal["auto", "shared_path", "object_store"] = "auto"  # how scoring workers get vectors

    @model_validator(mode="after")
    def _no_ray_client(self) -> ScaleoutSettings:
        if (self.ray_address or "").startswith("ray://"):
            raise ValueError(
                f"ray_address {self.ray_address!r} is a Ray Client address, and Ray Data jobs cannot run over "
                "Ray Client: make this machine a node of the cluster (ray start --address=<head>:6379) and set "
                'ray_address = "auto"'
            )
        return self


class PoolSettings(_Section):
    id_field: str = "id"
    text_field: str = "text"
    label_field: str = "label"
    embedding_field: str = "embedding"


class WebhookSettings(_Section):
    """Label Studio calls the daemon on each annotation; polling stays the fallback."""

    # "register" is the key in files and env; as a field name it would shadow BaseModel.register
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    enabled: bool = False
    host: str = "127.0.0.1"  # the address the daemon listens on
    port: int = Field(default=8765, ge=1, le=65535)
    secret: SecretStr | None = None  # sent by Label Studio in the X-Labelloop-Secret header
    public_url: str | None = None  # what Label Studio calls; None = http://host:port/webhook
    register_on_start: bool = Field(default=True, alias="register")  # create/update the project's webhook
    max_body_bytes: int = Field(default=1_048_576, gt=0)  # bigger calls get 413
    min_interval_s: float = Field(default=1.0, ge=0)  # webhook-triggered syncs start at most this often

    @field_validator("secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return _blank_to_none(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LABELLOOP_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    scaleout: ScaleoutSettings = Field(default_factory=ScaleoutSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    def api_key(self) -> str:
        """Return the Label Studio token, refusing a missing or placeholder one.

        Raises:
            ConfigError: no usable token is configured.
        """
        secret = self.label_studio.api_key
        value = secret.get_secret_value().strip() if secret is not None else ""
        if value.lower() in _PLACEHOLDER_SECRETS:
            raise ConfigError(
                "no Label Studio API token configured: set LABELLOOP_LABEL_STUDIO__API_KEY "
                "(a Personal Access Token from Account & Settings, or a legacy token)"
            )
        if not all(33 <= ord(char) < 127 for char in value):  # an HTTP header cannot carry it
            raise ConfigError(
                "the Label Studio API token holds a character no token has (a space, a line break, a "
                "typographic quote or another non-ASCII character): copy it again from Account & Settings"
            )
        return value

    def webhook_secret(self) -> str:
        """Return the webhook's shared secret, refusing a missing, placeholder or weak one.

        Raises:
            ConfigError: no usable secret is configured.
        """
        secret = self.webhook.secret
        value = secret.get_secret_value() if secret is not None else ""
        how = 'set LABELLOOP_WEBHOOK__SECRET (e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
        if value.strip().lower() in _PLACEHOLDER_SECRETS:
            raise ConfigError(f"webhook.enabled needs a shared secret: {how}")
        if len(value) < 16 or not all(33 <= ord(char) < 127 for char in value):
            raise ConfigError(f"the webhook secret must be at least 16 printable ASCII characters, no spaces: {how}")
        return value

    def webhook_url(self) -> str:
        """Return the URL Label Studio should call: ``public_url`` or ``http://host:port/webhook``.

        Raises:
            ConfigError: the URL is not http(s), or the default would name a wildcard address.
        """
        hook = self.webhook
        if hook.public_url is None:
            if _is_wildcard(hook.host):
                raise ConfigError(
                    f"webhook.host {hook.host} listens everywhere; set webhook.public_url "
                    "to the address Label Studio can reach the daemon at"
                )
            host = f"[{hook.host}]" if ":" in hook.host else hook.host
            return f"http://{host}:{hook.port}/webhook"
        parts = urlsplit(hook.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("webhook.public_url must be an http(s) URL")
        return hook.public_url

    def public_dump(self) -> dict[str, Any]:
        """Return the effective settings as plain data, secrets masked."""
        data = self.model_dump(mode="json")
        for section, key in (("label_studio", "url"), ("store", "url"), ("model", "encoder"),
                             ("webhook", "public_url"), ("scaleout", "ray_address")):
            if data[section][key] is not None:
                data[section][key] = masked_url(data[section][key])
        if self.label_studio.api_key is not None:
            data["label_studio"]["api_key"] = "**********"
        if self.webhook.secret is not None:
            data["webhook"]["secret"] = "**********"
        return data


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from kwargs, environment and the TOML file.

    ``config_path`` defaults to ``$LABELLOOP_CONFIG`` or ``./labelloop.toml``; a missing
    default file is fine, a missing explicit one is not.

    Raises:
        ConfigError: the file is missing or the values do not validate.
    """
    explicit = config_path is not None or "LABELLOOP_CONFIG" in os.environ
    path = Path(config_path or os.environ.get("LABELLOOP_CONFIG", DEFAULT_CONFIG_FILE))
    if explicit and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (run `labelloop init` to write one)")

    class _WithFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path.is_file():
                sources.append(_ConfigFileSource(settings_cls, path))
            return tuple(sources)

    _refuse_unknown_variables()
    try:
        return _WithFile(**overrides)
    except ValidationError as e:
        errors = e.errors(include_input=False, include_url=False)
        from_environment = all(_variables_of(tuple(str(p) for p in item["loc"])) for item in errors)
        where = str(path) if path.is_file() and not from_environment else "environment"
        raise ConfigError(f"invalid settings ({where}): {describe_invalid(e)}") from None
    except SettingsError as e:  # an environment value that is not the JSON a list or table needs
        raise ConfigError(f"invalid settings (environment): {_describe_env(e)}") from None
    except ValueError as e:  # TOML syntax errors
        raise ConfigError(f"invalid settings file {path}: {e}") from None


class _ConfigFileSource(TomlConfigSettingsSource):
    """The config file's values, its relative store paths taken from the file's folder.

    So ``labelloop -c /srv/x/labelloop.toml status`` reads the store beside that file from any
    working directory, as the daemon started there does. Paths set by an environment variable
    or a keyword argument stay relative to the working directory.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, toml_file=path)
        self._path = path
        self._folder = path.resolve().parent

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        _warn_if_others_read(self._path, data)
        store = data.get("store")
        if not isinstance(store, dict):
            return data
        anchored = dict(store)
        url, data_dir = store.get("url"), store.get("data_dir")
        prefix = "sqlite:///"
        if isinstance(url, str) and url.startswith(prefix) and url != prefix and ":memory:" not in url:
            anchored["url"] = prefix + str(self._folder / Path(url[len(prefix):]).expanduser())
        if isinstance(data_dir, str) and data_dir:
            anchored["data_dir"] = str(self._folder / Path(data_dir).expanduser())
        return {**data, "store": anchored}


def _warn_if_others_read(path: Path, data: dict[str, Any]) -> None:
    """Warn, once per file and process, when the file holds a secret that other users may read.

    ``labelloop init`` writes no secret, so the file keeps the umask's mode (``0644`` typically)
    when someone adds ``api_key`` or the webhook's ``secret`` to it by hand.
    """
    held = [f"{section}.{key}" for section, key in (("label_studio", "api_key"), ("webhook", "secret"))
            if isinstance(data.get(section), dict) and str(data[section].get(key) or "").strip()]
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if not held or not mode & 0o044 or path.resolve() in _WARNED_FILES:
        return
    _WARNED_FILES.add(path.resolve())
    log.warning("%s holds %s and other users may read it (mode %04o): run `chmod 600 %s`, or set the secret in "
                "the environment instead (LABELLOOP_LABEL_STUDIO__API_KEY, LABELLOOP_WEBHOOK__SECRET)",
                path, " and ".join(held), mode, path)


def masked_url(url: str) -> str:
    """``url`` for display: the password of its ``user:password@`` part and every query value as ``***``.

    A query value may be a key (``?key=…``, the way some proxies take one); ``config show``
    printed it in clear (QA). The rest of the URL is left as written (``sqlite:////abs/path``).
    """
    head, question, rest = url.partition("?")
    if question:
        query, hash_, fragment = rest.partition("#")
        rest = "&".join(f"{field.split('=', 1)[0]}=***" if "=" in field else field
                        for field in query.split("&")) + hash_ + fragment
    parts = urlsplit(head)
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        head = parts._replace(netloc=f"{user}:***@{host}").geturl()
    return head + question + rest


def _describe_env(error: SettingsError) -> str:
    """Name the ``LABELLOOP_*`` variables of the section pydantic-settings could not parse."""
    field = str(error).split('"')[1] if str(error).count('"') >= 2 else ""
    prefix = f"LABELLOOP_{field.upper()}__"
    names = sorted(name.upper() for name in os.environ if name.upper().startswith(prefix))
    return (f"cannot parse {', '.join(names) or 'a LABELLOOP_ variable'}: a list or table value is JSON, "
            """e.g. LABELLOOP_LOOP__CLASSES='["billing", "fraud"]'""")


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def describe_invalid(error: ValidationError) -> str:
    """Say where and why, never the offending value (it may be a secret).

    A setting that comes from an environment variable names it: the message otherwise points at
    the config file, which may not hold the key at all.
    """
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        path = tuple(str(p) for p in item["loc"])
        named = _variables_of(path)
        source = f" (from {', '.join(named)})" if named else ""
        parts.append(f"{'.'.join(path)}{source}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _variables_of(path: tuple[str, ...]) -> list[str]:
    """The environment variables that set the setting at ``path``: its own, else (a section's own check,
    say model's backend with dtype) those of the section that are set."""
    environment = {name.upper() for name in os.environ}
    variable = "LABELLOOP_" + "__".join(path).upper()
    return [variable] if variable in environment else sorted(
        name for name in environment if name.startswith(variable + "__"))


# LABELLOOP_* variables that are not settings: read by the CLI, the Makefile or the tests
OTHER_VARIABLES = frozenset({"LABELLOOP_CONFIG", "LABELLOOP_LOG_LEVEL", "LABELLOOP_LOG_FORMAT", "LABELLOOP_LS_VENV",
                             "LABELLOOP_SKIP_INTEGRATION", "LABELLOOP_MEASURE_FRESHNESS"})


def _refuse_unknown_variables() -> None:
    """A ``LABELLOOP_*`` variable that names no section was ignored in silence (QA): a typo in the section
    (``LABELLOOP_LOPP__BATCH_SIZE``) or one underscore for two (``LABELLOOP_LOOP_BATCH_SIZE``) left the
    default in force. An unknown key within a section is refused by the section itself.

    Raises:
        ConfigError: naming the variable and the form a setting's variable takes.
    """
    sections = sorted(Settings.model_fields)
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("LABELLOOP_") or upper in OTHER_VARIABLES:
            continue
        section, nested, _ = upper.removeprefix("LABELLOOP_").partition("__")
        if nested and section.lower() in sections:
            continue
        close = next((s for s in sections if section.lower().startswith(s + "_")), None)
        hint = (f"; a section and its key are joined by two underscores: LABELLOOP_{close.upper()}__"
                f"{section[len(close) + 1:]}" if close and not nested else "")
        raise ConfigError(
            f"unknown setting variable {name}: a setting's variable is LABELLOOP_<SECTION>__<KEY>, with the "
            f"sections {', '.join(sections)}{hint}"
        )
