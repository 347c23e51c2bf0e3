"""Configuration, read from environment variables prefixed ``REGISTRY_``.

The defaults are the embedded ones: a SQLite file and a storage folder under ``./var``, and a
broker on the local filesystem, so that the registry runs with no server beside it. Production
sets the MySQL URL, the Redis URL and the storage URL; the README lists every variable.

Each field's type says how its variable is read (names are matched whatever their case): ``int``
and ``float`` as numbers, ``bool`` as true/false, 1/0, yes/no, on/off (t/f, y/n), a ``Literal``
as one of its values, a :class:`Secret` as text kept out of logs and reprs. A value that does
not read as its type stops the process at start with :class:`SettingsError`, naming each
variable at fault. This is the standard library's work: a settings library (pydantic-settings,
with pydantic) costs every process about 11 MiB of memory, for what this module does in a
page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

DATA_DIR = Path("var")
ENV_PREFIX = "REGISTRY_"


class SettingsError(ValueError):
    """Settings whose values do not read as their types."""


class Secret:
    """A setting that is a secret (a password, a key): its repr and str hide it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


NO_SECRET = Secret("")

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _read(value: object, kind: Any) -> object:
    """``value`` (text from the environment, or a value given in code) as ``kind``."""
    if kind is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise ValueError("must be text")
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(f"must be true or false, not {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value))
        except ValueError:
            pass
        with contextlib.suppress(ValueError):
            number = float(str(value))
            if number.is_integer():  # 30.0 is 30
                return int(number)
        raise ValueError(f"must be a whole number, not {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise ValueError(f"must be a number, not {value!r}") from None
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"must be text, not {value!r}")
    raise TypeError(f"settings of type {kind!r} are not read")


@dataclasses.dataclass(init=False)
class Settings:
    # Where data lives.
    database_url: str = f"sqlite:///{DATA_DIR / 'registry.db'}"
    storage_url: str = f"file://{DATA_DIR / 'storage'}"
    broker_url: str = f"filesystem://{DATA_DIR / 'broker'}"
    # How long a transaction waits for a lock another one holds (SQLite's busy timeout, InnoDB's
    # lock wait timeout) before the request is answered 503 and may be retried (on MySQL the
    # transaction is first run again, up to five attempts in all).
    database_lock_timeout_seconds: int = 30
    # Aliyun OSS storage (``oss://`` storage URLs): the access key, or a mounted secret file
    # holding it (JSON, read again when it changes); and whether blob downloads may be
    # redirected to signed OSS URLs.
    oss_access_key_id: str = ""
    oss_access_key_secret: Secret = NO_SECRET
    oss_credentials_file: str = ""
    oss_redirect: bool = False
    # The queue the services' events and the janitor's tasks go through: registries sharing a
    # Redis keep apart by giving each its own.
    broker_queue: str = "registry-janitor"

    # Where the services listen, and where the gateway finds them.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 5000
    # The URL clients reach the gateway at, when it is not the address above (behind an
    # ingress or a proxy, or listening on every address): https://registry.example.com.
    public_url: str = ""
    blob_service_host: str = "127.0.0.1"
    blob_service_port: int = 5001
    manifest_service_host: str = "127.0.0.1"
    manifest_service_port: int = 5002
    blob_service_url: str = ""
    # The gateway sends blob bytes from the storage itself when it is a filesystem it shares
    # with the blob service (the same volume mounted in both); off: it relays them.
    gateway_reads_storage: bool = True
    manifest_service_url: str = ""

    # Limits.
    max_manifest_size: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_url_bytes: int = 16 * 1024  # a request target's length at the gateway (at most 65535)
    max_page_size: int = 10000
    default_page_size: int = 1000
    # How long a request that writes to an upload holds it without renewing its lease (renewed
    # every third of it while bytes flow). A replica killed while writing holds the upload
    # this long at most; the clocks of the replicas must agree to well within it.
    upload_lease_seconds: int = 30

    # Garbage collection and housekeeping (the janitor).
    gc_grace_seconds: int = 24 * 3600  # blobs and manifests younger than this are never collected
    gc_interval_seconds: int = 3600
    gc_untagged_manifests: bool = False  # also collect manifests no tag or index refers to
    gc_batch_size: int = 1000  # reviews one sweep takes at most
    upload_purge_age_seconds: int = 7 * 24 * 3600  # as the reference registry's upload purging
    upload_purge_interval_seconds: int = 24 * 3600
    reconcile_interval_seconds: int = 3600
    mirror_expiry_interval_seconds: int = 3600  # how often mirrored content is expired
    retention_interval_seconds: int = 3600  # how often the policies' retention rules run
    reconcile_grace_seconds: int = 3600  # objects younger than this are never called orphans
    # The walk of storage for objects no row knows (janitor.storage_sweep): how often one
    # starts, the objects a second it lists at most (0: no limit), and the time slice of one
    # task (the next goes on where it stopped).
    storage_sweep_interval_seconds: int = 7 * 24 * 3600
    storage_sweep_rate: float = 1000.0
    storage_sweep_segment_seconds: int = 600
    promote_delay_seconds: int = 60
    # Beat as a thread of the (one) janitor worker, whose tasks run in a thread of its own: one
    # process for the whole janitor, as `make run` wants. Off where the worker has replicas
    # (Kubernetes, Compose): there beat is a process of its own, started once, and the worker
    # runs its tasks in a prefork child, which enforces the tasks' hard time limits.
    beat_in_worker: bool = True
    beat_schedule_file: str = str(
        DATA_DIR / "celerybeat-schedule"
    )  # reconcile moves blobs still at their upload key after this

    # Authentication and authorization at the gateway (README, "Security"). "none": anonymous
    # full access, and the gateway does no work for it; "htpasswd": HTTP Basic against the users
    # file; "token": bearer tokens (Docker registry token specification), issued by the
    # gateway at /auth/token or by an external issuer trusted by its public key.
    # Mirrored namespaces, pulled through from other registries (shared.mirrors); YAML or JSON.
    mirrors_file: str = ""
    # Webhooks (shared.notifications): the endpoints file (YAML or JSON, reloaded on change);
    # how often the janitor looks for events due (new ones are sent at once: this look finds
    # retries, and the events whose wake-up was lost, which wait this long at most); how long
    # delivered events are kept for replays.
    notifications_file: str = ""
    notifications_poll_seconds: float = 2.0
    notifications_retention_seconds: int = 7 * 24 * 3600
    # Immutable tags, quotas and retention (shared.policies), YAML or JSON; re-read within a
    # second of a change.
    policies_file: str = ""
    auth: Literal["none", "htpasswd", "token"] = "none"
    auth_users_file: str = ""  # users (bcrypt hashes) and grants, YAML or JSON; reloaded on change
    auth_realm: str = "registry"  # the Basic realm
    auth_service: str = "registry"  # the token's audience and the challenge's service
    # The token endpoint's URL. Default: /auth/token at the public URL below, or at the address
    # the gateway listens on; never the request's Host header, which the client chooses.
    auth_token_realm: str = ""
    auth_token_issuer: str = "registry-token-issuer"
    auth_token_private_key_file: str = ""  # PEM, RSA or EC: the gateway issues tokens with it
    auth_token_public_key_file: str = ""  # PEM public keys or certificates of trusted issuers
    auth_token_ttl_seconds: int = 300
    auth_refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Shared between the gateway and the services: with it set, the services answer only
    # requests that carry it (health and metrics excepted). With authentication on and no
    # secret, a service listening beyond loopback refuses to start unless the network between
    # the gateway and the services is declared trusted (nobody else can reach their ports).
    internal_secret: Secret = NO_SECRET
    internal_network_trusted: bool = False
    # The web interface's sign-in (with authentication on): the key its session cookies are
    # signed with, the same on every gateway replica (default: one derived from the internal
    # secret; with neither set, nobody can sign in), and how long a session lasts.
    ui_session_secret: Secret = NO_SECRET
    ui_session_seconds: int = 12 * 3600
    ui_flower_url: str = ""  # where operators reach Flower, linked from the overview page
    # Rate limits at the gateway, in-process token buckets (0: off). Burst 0: the rate, at least 1.
    rate_limit_client_per_second: float = 0.0
    rate_limit_client_burst: int = 0
    rate_limit_repository_per_second: float = 0.0
    rate_limit_repository_burst: int = 0
    max_concurrent_uploads_per_client: int = 0  # upload requests (POST, PATCH, PUT) at once
    # What one client may hold at the gateway (``api_gateway.connections``): time to send a
    # request's headers (and a new connection's first request), the longest pause inside a
    # request body, connections open at once from one address (0: no cap), and the whole time
    # of a request that is not a blob transfer (manifests, tags, catalog, referrers, tokens).
    client_header_timeout_seconds: float = 20.0
    client_body_timeout_seconds: float = 60.0
    max_connections_per_client: int = 256
    request_timeout_seconds: float = 120.0
    # Proxies in front of the gateway whose X-Forwarded-For and X-Forwarded-Proto are believed
    # (comma-separated addresses or networks; empty: none, so no client can choose the address
    # that rate limits and the connection cap count it under).
    forwarded_allow_ips: str = ""

    # Where the janitor serves its Prometheus metrics (0: nowhere).
    janitor_metrics_host: str = "127.0.0.1"
    janitor_metrics_port: int = 5003

    log_level: str = "info"

    def __init__(self, **values: object) -> None:
        """The settings: ``values`` where given, else the ``REGISTRY_*`` environment variables,
        else the defaults."""
        unknown = values.keys() - _TYPES.keys()
        if unknown:
            raise TypeError(f"no such setting: {', '.join(sorted(unknown))}")
        environment = {
            name.upper(): value
            for name, value in os.environ.items()
            if name.upper().startswith(ENV_PREFIX)
        }
        faults = []
        for name, kind in _TYPES.items():
            variable = ENV_PREFIX + name.upper()
            if name in values:
                given, what = values[name], name
            elif variable in environment:
                given, what = environment[variable], variable
            else:
                continue  # the class's default
            try:
                setattr(self, name, _read(given, kind))
            except ValueError as exc:
                faults.append(f"{what} {exc}")
        if faults:
            raise SettingsError("invalid settings: " + "; ".join(faults))

    @property
    def notifications_queue(self) -> str:
        """The queue of notification deliveries: a worker of their own takes them, so that a
        slow endpoint never holds up the janitor's other work."""
        return f"{self.broker_queue}-notifications"

    def service_url(self, which: str) -> str:
        if which == "blob":
            return (
                self.blob_service_url or f"http://{self.blob_service_host}:{self.blob_service_port}"
            )
        if which == "manifest":
            return (
                self.manifest_service_url
                or f"http://{self.manifest_service_host}:{self.manifest_service_port}"
            )
        raise ValueError(which)


_hints = typing.get_type_hints(Settings)
_TYPES: dict[str, Any] = {field.name: _hints[field.name] for field in dataclasses.fields(Settings)}


@lru_cache
def get_settings() -> Settings:
    return Settings()
