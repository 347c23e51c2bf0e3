"""Requests for mirrored namespaces (``shared.mirrors``), at the gateway: containerd's
``?ns=<upstream host>`` names the upstream a mirror request is for, and its repository name is
then the one under that mirror's namespace; and a mirror is read-only (pushes and deletes are
refused with ``DENIED``). Decided before authorization, which applies to the name found here."""

from __future__ import annotations

from starlette.requests import Request

from api_gateway.routing import Match
from shared import mirrors
from shared.errors import ErrorCode, RegistryError
from shared.reference import validate_name

READS = frozenset({"GET", "HEAD"})


def resolve(found: Match, request: Request) -> Match:
    """``found`` with the repository name the request is for, or the error to answer."""
    if found.name is None:
        return found
    configured = mirrors.configured()
    host = request.query_params.get("ns")
    if host:
        mirror = configured.for_host(host)
        if mirror is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"this registry mirrors no {host[:200]!r}")
        name = validate_name(f"{mirror.namespace}/{found.name}")
        path = found.path.replace(f"/v2/{found.name}/", f"/v2/{name}/", 1)
        found = Match(found.route, path, name)
    mirror = configured.find(found.name) if found.name is not None else None
    if mirror is not None and request.method not in READS:
        raise RegistryError(
            ErrorCode.DENIED,
            f"{found.name!r} is in {mirror.namespace!r}, a read-only mirror of {mirror.url}: "
            "push to a repository outside it",
        )
    return found
