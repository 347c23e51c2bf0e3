"""The web interface's pages (``/ui/``): thin handlers that read through ``ui.pages`` and
render Jinja2 templates. Served by the manifest service, reached through the gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from manifest_service import manifests
from manifest_service.media_types import IMAGE_MANIFESTS, INDEXES
from manifest_service.ui import pages, sessions
from manifest_service.ui.access import Viewer, viewer
from shared import internal_auth
from shared.errors import RegistryError
from shared.reference import DIGEST_RE, NAME_RE, TAG_RE
from shared.settings import get_settings
from shared.web import UI_CSRF_COOKIE, UI_CSRF_HEADER

HERE = Path(__file__).parent
CONFIG_LIMIT = 1 << 20  # an image config larger than this is not shown
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
KINDS = {
    "application/vnd.docker.distribution.manifest.v2+json": "Docker image",
    "application/vnd.docker.distribution.manifest.list.v2+json": "Docker manifest list",
    "application/vnd.oci.image.manifest.v1+json": "OCI image",
    "application/vnd.oci.image.index.v1+json": "OCI index",
}


# What an image's config says its type is; shown as the manifest's kind instead.
IMAGE_CONFIGS = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


def kind(media_type: str, artifact_type: str | None) -> str:
    """What a manifest is, in a word or two: an artifact's type, else an image's or index's."""
    if artifact_type and artifact_type not in IMAGE_CONFIGS:
        return artifact_type
    return KINDS.get(media_type, media_type)


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: int | None) -> str:
    """``size`` bytes in binary units, one decimal: 512B, 1.5KiB, 20.0GiB."""
    if size is None:
        return "-"
    number = float(size)
    for unit in _UNITS:
        if abs(number) < 1024:
            return f"{number:.0f}B" if unit == "B" else f"{number:.1f}{unit}"
        number /= 1024
    return f"{number:.1f}EiB"


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if when is None:
        return "never"
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def exact(when: dt.datetime | None) -> str:
    return "" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def short(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}:{hex_[:12]}" if hex_ else digest


templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes
templates.env.filters.update(size=human_size, ago=ago, exact=exact, short=short)
templates.env.globals.update(kinds=KINDS, kind=kind)


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """A page. Every page carries the CSRF token its forms send back: signed in, the session's,
    which the gateway hands on; else the cookie's value (a new one, and the cookie, when the
    browser has none)."""
    session_token = request.headers.get(UI_CSRF_HEADER)
    token = session_token or request.cookies.get(UI_CSRF_COOKIE) or ""
    fresh = session_token is None and not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", token)
    if fresh:
        token = secrets.token_urlsafe(32)
    context.setdefault("viewer", viewer(request))
    context.setdefault("host", _registry_host(request))
    context["csrf"] = token
    context["here"] = request.url.path
    response: Response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    if fresh:
        response.set_cookie(
            UI_CSRF_COOKIE,
            token,
            path="/ui",
            secure=get_settings().public_url.startswith("https://"),
            httponly=True,
            samesite="strict",
        )
    return response


def _registry_host(request: Request) -> str:
    """The host clients pull from: the public URL's when set, else the one the browser used."""
    public = get_settings().public_url
    if public:
        return public.split("://", 1)[-1].rstrip("/")
    return request.headers.get("x-forwarded-host") or request.headers.get("host", "localhost")


def _not_found(request: Request, what: str) -> Response:
    return _render(request, "error.html", 404, title="Not found", message=what)


async def catalog(request: Request) -> Response:
    who = viewer(request)
    search = request.query_params.get("q", "").strip()[:255]
    after = request.query_params.get("after") or None
    page = await asyncio.to_thread(pages.catalog, who.sees, search, after)
    return _render(request, "catalog.html", page=page, search=search, after=after)


# /ui/repositories/<name>[/-/(manifests|tags)/<reference>[/delete]]: "-" is no name component.
_BELOW = re.compile(
    r"(?P<name>.+?)/-/(?P<kind>manifests|tags)/(?P<reference>[^/]+)(?P<delete>/delete)?"
)


def _address(request: Request) -> tuple[str, str | None, str | None, bool] | None:
    """The repository, the kind and reference below it, and whether it is a delete page; or
    None for a path that names nothing."""
    rest: str = request.path_params["rest"]
    below = _BELOW.fullmatch(rest)
    if below is None:
        return (rest, None, None, False) if NAME_RE.fullmatch(rest) else None
    name, kind, reference = below["name"], below["kind"], below["reference"]
    pattern = DIGEST_RE if kind == "manifests" else TAG_RE
    if not NAME_RE.fullmatch(name) or not pattern.fullmatch(reference):
        return None
    return name, kind, reference, below["delete"] is not None


async def repository_or_manifest(request: Request) -> Response:
    address = _address(request)
    if address is None:
        return _not_found(request, "There is no such page.")
    name, kind, reference, delete = address
    who = viewer(request)
    if not who.sees(name):
        return _not_found(request, f"No repository {name} that you may see.")
    if kind is not None and reference is not None:
        if delete:
            return await _confirm_delete(request, who, name, kind, reference)
        if kind == "manifests":
            return await _manifest(request, who, name, reference)
        return _not_found(request, "There is no such page.")
    sort = "name" if request.query_params.get("sort") == "name" else "time"
    search = request.query_params.get("q", "").strip()[:128]
    after = request.query_params.get("after") or None
    try:
        page = await asyncio.to_thread(pages.repository, name, sort, search, after)
    except pages.NotFound:
        return _not_found(request, f"No repository {name} that you may see.")
    return _render(
        request,
        "repository.html",
        repo=page,
        sort=sort,
        search=search,
        after=after,
        may_delete=who.may("delete", name),
        next_query=urlencode({"sort": sort, "q": search, "after": page.tags.next_cursor or ""}),
    )


async def _confirm_delete(
    request: Request, who: Viewer, name: str, kind: str, reference: str
) -> Response:
    """What deleting a tag or a manifest would remove, and the form that does it."""
    if not who.may("delete", name):
        return _refused(request, name)
    digest = reference
    if kind == "tags":
        found = await asyncio.to_thread(pages.tag_target, name, reference)
        if found is None:
            return _not_found(request, f"No tag {reference} in {name}.")
        digest = found
    try:
        page = await asyncio.to_thread(pages.manifest, name, digest)
    except pages.NotFound:
        return _not_found(request, f"No manifest {digest} in {name}.")
    return _render(request, "delete.html", m=page, kind=kind, reference=reference)


async def delete(request: Request) -> Response:
    """A delete form's post (the gateway checked its CSRF token): the tag, or the manifest with
    its tags, as ``DELETE /v2/<name>/manifests/<reference>`` does."""
    address = _address(request)
    if address is None or address[1] is None or not address[3]:
        return _not_found(request, "There is no such page.")
    name, _, reference, _ = address
    who = viewer(request)
    if not who.sees(name):
        return _not_found(request, f"No repository {name} that you may see.")
    if not who.may("delete", name):
        return _refused(request, name)
    assert reference is not None
    try:
        await manifests.delete_reference(name, reference)
    except RegistryError as exc:
        if exc.status == 404:
            return _not_found(request, f"No {reference} in {name}: deleted already?")
        return _render(request, "error.html", exc.status, title="Not deleted", message=exc.detail)
    return RedirectResponse(f"/ui/repositories/{name}", status_code=303)


def _refused(request: Request, name: str) -> Response:
    return _render(
        request,
        "error.html",
        403,
        title="Not allowed",
        message=f"You may not delete from {name}.",
    )


async def overview(request: Request) -> Response:
    if not viewer(request).operator:
        return _not_found(request, "There is no such page.")
    figures = await asyncio.to_thread(pages.overview)
    settings = get_settings()
    return _render(request, "overview.html", o=figures, flower=settings.ui_flower_url)


async def login_page(request: Request) -> Response:
    failed = request.query_params.get("failed")
    return _render(
        request,
        "login.html",
        failed=failed,
        next=request.query_params.get("next", "/ui/"),
        sign_in=get_settings().auth != "none",
    )


async def _manifest(request: Request, who: Viewer, name: str, digest: str) -> Response:
    try:
        page = await asyncio.to_thread(pages.manifest, name, digest)
    except pages.NotFound:
        return _not_found(request, f"No manifest {digest} in {name}.")
    config: ImageConfig | None = None
    config_descriptor = page.document.get("config")
    if page.media_type in IMAGE_MANIFESTS and isinstance(config_descriptor, dict):
        config = await _image_config(name, config_descriptor)
    return _render(
        request,
        "manifest.html",
        m=page,
        config=config,
        is_index=page.media_type in INDEXES,
        layers=[d for d in page.document.get("layers") or [] if isinstance(d, dict)],
        pretty=json.dumps(page.document, indent=2, sort_keys=False),
    )


_client: httpx.AsyncClient | None = None


def _blob_service() -> httpx.AsyncClient:
    """One client (and its connections) for the process's reads of image configs: making one
    per page cost ~15 ms (its TLS context), more than the rest of the page."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=5.0, trust_env=False)
    return _client


@dataclass(frozen=True)
class ImageConfig:
    """What the manifest page shows of an image's config: each field as its type should be,
    or left out (a config is whatever its pusher wrote)."""

    created: str
    platform: str
    entrypoint: str | None  # as JSON
    command: str | None
    environment: list[str]
    labels: list[tuple[str, str]]
    history: list[tuple[str, bool]]  # (created_by, empty layer)

    @classmethod
    def read(cls, document: dict[str, Any]) -> ImageConfig:
        def text(value: Any) -> str:
            return value if isinstance(value, str) else ""

        inner = document.get("config")
        inner = inner if isinstance(inner, dict) else {}
        labels = inner.get("Labels")
        history = document.get("history")
        platform = "/".join(
            p for p in (text(document.get(k)) for k in ("os", "architecture", "variant")) if p
        )
        return cls(
            created=text(document.get("created")) or "-",
            platform=platform or "-",
            entrypoint=_command(inner.get("Entrypoint")),
            command=_command(inner.get("Cmd")),
            environment=[e for e in inner.get("Env") or [] if isinstance(e, str)]
            if isinstance(inner.get("Env"), list)
            else [],
            labels=sorted((str(k), text(v)) for k, v in labels.items())
            if isinstance(labels, dict)
            else [],
            history=[
                (text(h.get("created_by")), h.get("empty_layer") is True)
                for h in history
                if isinstance(h, dict)
            ]
            if isinstance(history, list)
            else [],
        )


def _command(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(part, str) for part in value) and value:
        return json.dumps(value)
    return None


async def _image_config(name: str, descriptor: dict[str, Any]) -> ImageConfig | None:
    """The image's config, read from the blob service, or None (not an image config, too
    large, unreadable, not JSON)."""
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if descriptor.get("mediaType") not in IMAGE_CONFIGS:
        return None
    if not isinstance(digest, str) or not isinstance(size, int) or size > CONFIG_LIMIT:
        return None
    settings = get_settings()
    url = f"{settings.service_url('blob')}/v2/{name}/blobs/{digest}"
    headers = dict(internal_auth.gateway_headers(settings))
    try:
        answer = await _blob_service().get(url, headers=headers)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200 or len(answer.content) > CONFIG_LIMIT:
        return None
    try:
        document = json.loads(answer.content)
    except ValueError:
        return None
    return ImageConfig.read(document) if isinstance(document, dict) else None


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", catalog, methods=["GET"]),
            Route("/login", login_page, methods=["GET"]),
            Route("/logout", sessions.sign_out, methods=["POST"]),
            Route("/overview", overview, methods=["GET"]),
            Route("/repositories/{rest:path}", repository_or_manifest, methods=["GET"]),
            Route("/repositories/{rest:path}", delete, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(sessions.SignedOutSessions)],
    )
