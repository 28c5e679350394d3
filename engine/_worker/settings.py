"""The worker's settings (a TOML file), its secrets, and the layout of its state dir."""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import logging
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._errors import ConfigError
from .._graph.client import DEFAULT_API_BASE, DEFAULT_API_VERSION
from .._hints import did_you_mean
from .._quota.limiter import LimiterConfig
from .intake import Refusal, job_option
from .urls import url_prefix

log = logging.getLogger("engine.worker")

TOKEN_ENV = "META_ACCESS_TOKEN"  # default access token; META_ACCESS_TOKEN_<digits> per account
APP_SECRET_ENV = "META_APP_SECRET"
API_TOKEN_ENV = "AUDIENCE_ENGINE_API_TOKEN"  # bearer token of the job API
_ACCOUNT_TOKEN_ENV = re.compile(r"META_ACCESS_TOKEN_([0-9]{1,20})")
# Shorter bearer tokens can be guessed; 32 characters of token_urlsafe hold 192 bits.
MIN_API_TOKEN_CHARS = 32
# The Host header names the worker answers to by default: loopback, any port. A page that
# reaches 127.0.0.1 by DNS rebinding still sends its own host name, which is refused.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the worker keeps things in its state dir: the job table, each job's engine
    checkpoint and, for rows sent in a request body, their hashes."""

    root: Path

    @property
    def table(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def rows(self) -> Path:
        return self.root / "rows"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def create(self) -> None:
        """Create the state dir, or make an existing one private: its directories 0700 and
        every file in them 0600, as an older version or another umask may have left them."""
        try:
            for directory in (self.root, self.rows, self.checkpoints):
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            loose = [
                (path, mode)
                for directory in (self.root, self.rows, self.checkpoints)
                for path in (directory, *directory.iterdir())
                # lstat: a symlink is left alone, never followed out of the state dir.
                if (mode := path.lstat().st_mode) & 0o077 and not stat.S_ISLNK(mode)
            ]
            for path, mode in loose:
                path.chmod(0o700 if stat.S_ISDIR(mode) else 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the state dir {self.root}: {exc}") from None
        if loose:
            log.warning(
                "state dir %s: made %d files and directories readable by this user only",
                self.root,
                len(loose),
            )

    def lock(self) -> IO[str]:
        """Hold the state dir until the returned file is closed: two workers on one dir
        would run each job twice. The OS lets go however the process ends, kill -9 too."""
        lock = open(  # noqa: SIM115 - the caller closes it
            self.root / "worker.lock", "w", opener=lambda p, flags: os.open(p, flags, 0o600)
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(f"another worker is using the state dir {self.root}") from None
        return lock

    def rows_file(self, job_id: str) -> Path:
        return self.rows / f"{job_id}.jsonl"

    def checkpoint(self, job_id: str) -> Path:
        return self.checkpoints / f"{job_id}.sqlite"

    def files_of(self, job_id: str) -> Iterator[Path]:
        """One job's files, with their SQLite and temporary companions."""
        for directory in (self.rows, self.checkpoints):
            yield from directory.glob(f"{job_id}.*")

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every job file (with its SQLite and temporary companions), by job id."""
        for directory in (self.rows, self.checkpoints):
            for path in directory.iterdir():
                yield path.name.split(".")[0], path


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The worker's settings (the TOML file's keys; `-` and `_` are the same in key names)."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8700
    max_jobs: int = 4
    grace_s: float = 30.0
    api_base: str = DEFAULT_API_BASE
    api_version: str = DEFAULT_API_VERSION
    secrets_file: Path | None = None
    input_dirs: tuple[Path, ...] = ()  # where input paths may be; empty: rows in bodies only
    input_urls: tuple[str, ...] = ()  # the URL prefixes input URLs may be under; empty: none
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES  # Host header names, without the port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_mb: float = 64.0
    max_queued_jobs: int = 1000
    max_metric_accounts: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    log_level: str = "info"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    limits: LimiterConfig = field(default_factory=LimiterConfig)
    job_defaults: Mapping[str, Any] = field(default_factory=dict)
    # A fleet: the Redis that replicas share (jobs, checkpoints, locks); None: one host.
    redis_url: str | None = None
    # A replica silent this long loses its jobs to the others.
    lease_s: float = 15.0


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "max_jobs": int,
    "grace_s": (int, float),
    "api_base": str,
    "api_version": str,
    "max_body_mb": (int, float),
    "max_queued_jobs": int,
    "max_metric_accounts": int,
    "header_timeout_s": (int, float),
    "body_timeout_s": (int, float),
    "log_level": str,
    "connect_timeout_s": (int, float),
    "read_timeout_s": (int, float),
    "redis_url": str,
    "lease_s": (int, float),
}


# Every top-level setting load_config takes (in the config file, "-" may stand for "_").
_SETTINGS = (
    *_SCALARS,
    "state_dir",
    "secrets_file",
    "tls_cert",
    "tls_key",
    "input_dirs",
    "input_urls",
    "allowed_hosts",
    "limits",
    "job_defaults",
)


def load_config(path: Path) -> WorkerConfig:
    """Read and check the config file; relative paths in it are relative to the file."""
    raw = _read_toml(path, "config")
    base = path.parent
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in _SCALARS:
            values[name] = _typed_setting(name, value, _SCALARS[name])
        elif name in ("state_dir", "secrets_file", "tls_cert", "tls_key"):
            values[name] = base / _typed_setting(name, value, str)
        elif name == "input_dirs":
            dirs = _typed_setting(name, value, list)
            values[name] = tuple(base / _typed_setting(name, d, str) for d in dirs)
            for directory in values[name]:
                if not directory.is_dir():
                    raise ConfigError(f"input-dirs: {directory} is not a directory")
        elif name == "input_urls":
            urls = _typed_setting(name, value, list)
            values[name] = tuple(
                url_prefix(_typed_setting(name, u, str), i) for i, u in enumerate(urls, 1)
            )
        elif name == "allowed_hosts":
            hosts = _typed_setting(name, value, list)
            values[name] = tuple(_typed_setting(name, h, str).lower() for h in hosts)
        elif name == "limits":
            values[name] = _limits(_typed_setting(name, value, dict))
        elif name == "job_defaults":
            table = _typed_setting(name, value, dict)
            try:
                values[name] = {k: job_option(k, v) for k, v in _dashless(table).items()}
            except Refusal as exc:
                raise ConfigError(f"job_defaults: {exc}") from None
            misplaced = set(values[name]) & {"audience", "ad_account", "input"}
            if misplaced:
                raise ConfigError(f"job_defaults cannot set {', '.join(sorted(misplaced))}")
        else:
            hint = did_you_mean(name, _SETTINGS)
            raise ConfigError(f"unknown setting {key!r} in {path}{hint.replace('_', '-')}")
    if "state_dir" not in values:
        raise ConfigError(f"{path}: state_dir is required")
    config = WorkerConfig(**values)
    if not 0 <= config.port <= 65535 or config.max_jobs < 1 or config.grace_s < 0:
        raise ConfigError("port must be 0..65535, max_jobs at least 1, grace_s not negative")
    timeouts = ("connect_timeout_s", "read_timeout_s", "header_timeout_s", "body_timeout_s")
    if not all(getattr(config, name) > 0 for name in timeouts):
        raise ConfigError(f"{', '.join(timeouts)} must be above 0")
    if config.max_queued_jobs < 1 or config.max_metric_accounts < 1:
        raise ConfigError("max_queued_jobs and max_metric_accounts must be at least 1")
    if not 4 <= config.lease_s <= 600:
        raise ConfigError("lease_s must be 4..600 seconds")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together: set both or neither")
    if logging.getLevelName(config.log_level.upper()) not in range(0, 51):
        raise ConfigError(
            f"log_level must be debug, info, warning or error, not {config.log_level}"
        )
    return config


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from None


def _typed_setting(name: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"setting {name} has the wrong type ({type(value).__name__})")
    return value


def _dashless(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): v for k, v in table.items()}


def _limits(table: Mapping[str, Any]) -> LimiterConfig:
    """[limits]: any scalar field of LimiterConfig (rate, burst, max_throttle_wait_s...)."""
    allowed = {f.name for f in dataclasses.fields(LimiterConfig)} - {"backoff"}
    values = _dashless(table)
    unknown = set(values) - allowed
    if unknown:
        name = sorted(unknown)[0]
        hint = did_you_mean(name, allowed).replace("_", "-")
        raise ConfigError(f"unknown [limits] setting {name!r}{hint}")
    try:
        return LimiterConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[limits]: {exc}") from None


@dataclass(frozen=True, slots=True)
class Secrets:
    """Access tokens by ad account, the default token, the app secret, the API bearer token."""

    access_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    access_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)

    def token_for(self, ad_account: str) -> str | None:
        return self.access_tokens.get(ad_account) or self.access_token


def load_secrets(path: Path | None, environ: Mapping[str, str]) -> Secrets:
    """Secrets from the file, then the environment over it; a per-account token wins over
    the default one wherever either comes from."""
    file = _read_secrets_file(path) if path is not None else {}
    tokens: dict[str, str] = dict(file.get("access_tokens", {}))
    for name, value in environ.items():
        match = _ACCOUNT_TOKEN_ENV.fullmatch(name)
        if match and value:
            tokens[f"act_{match[1]}"] = value
    return Secrets(
        access_tokens=tokens,
        access_token=environ.get(TOKEN_ENV) or file.get("access_token"),
        app_secret=environ.get(APP_SECRET_ENV) or file.get("app_secret"),
        api_token=environ.get(API_TOKEN_ENV) or file.get("api_token"),
    )


def _read_secrets_file(path: Path) -> dict[str, Any]:
    raw = _read_toml(path, "secrets")
    if path.stat().st_mode & 0o077:
        log.warning("secrets file %s is readable by other users; chmod 600 it", path)
    for key, value in raw.items():
        # Messages name keys, never values: a value may be a secret.
        if key == "access_tokens":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [access_tokens] must be a table")
            for account, token in value.items():
                if not re.fullmatch(r"act_[0-9]{1,20}", account) or not isinstance(token, str):
                    raise ConfigError(f"{path}: access_tokens.{account} must be act_ID = token")
        elif key not in ("access_token", "app_secret", "api_token"):
            hint = did_you_mean(key, ("access_token", "app_secret", "api_token", "access_tokens"))
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a non-empty string")
    return raw


def tls_context(config: WorkerConfig) -> ssl.SSLContext | None:
    """The server's TLS context when the config names a certificate and key."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load tls_cert {config.tls_cert} and tls_key: {exc}") from None
    return context


def check_exposure(config: WorkerConfig, secrets: Secrets) -> None:
    """Beyond loopback, anyone who can reach the port could upload: require the token, and
    say so when it would cross the network in plain text. A short token is refused anywhere."""
    if secrets.api_token is not None and len(secrets.api_token) < MIN_API_TOKEN_CHARS:
        # Never the token itself, nor its length: only what it must be.
        raise ConfigError(
            f"the API token ({API_TOKEN_ENV} or api_token) must be at least "
            f"{MIN_API_TOKEN_CHARS} characters; make one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))"'
        )
    if _is_loopback(config.host):
        return
    if not secrets.api_token:
        raise ConfigError(
            f"host {config.host} is reachable from other machines, so the job API needs a "
            f"bearer token: set {API_TOKEN_ENV} or api_token in the secrets file (or listen "
            "on 127.0.0.1)"
        )
    if config.tls_cert is None:
        log.warning(
            "host %s is reachable from other machines and TLS is off: the API token crosses "
            "the network in plain text; set tls_cert and tls_key",
            config.host,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
