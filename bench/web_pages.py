"""Scenario 12: the web interface's pages on a registry of ``ui_repositories`` repositories,
one of which holds ``ui_tags`` tags (ours only: the reference has no web interface). Each page
is fetched ``PAGE_REQUESTS`` times over one keep-alive connection, its answer checked."""

from __future__ import annotations

import time

from bench.client import Connection, Failure, image_manifest, sha256_digest
from bench.scenarios import (
    Context,
    Metric,
    Scenario,
    Sizes,
    percentile,
    push_base_blobs,
    put_manifests,
)
from bench.servers import Registry

PAGE_REQUESTS = 100
BIG = "bench/ui-big"
PAGES = (
    ("catalog", "repositories, first page"),
    ("catalog_search", "repositories, a search"),
    ("catalog_deep", "repositories, a page in the middle"),
    ("tags", "the large repository's tags, newest first"),
    ("tags_deep", "its tags by name, a page in the middle"),
    ("tags_filter", "its tags, a filter"),
    ("manifest", "a manifest (with its config)"),
    ("overview", "the overview"),
)


class WebPages(Scenario):
    name = "ui"
    metrics = tuple(
        Metric(f"{key}_{q}", f"{label} {q}", "ms", False, False, True)
        for key, label in PAGES
        for q in ("p50", "p99")
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"12 web interface: {sizes.ui_repositories} repositories, {sizes.ui_tags} tags in "
            f"one ({PAGE_REQUESTS} requests a page)"
        )
        self.digest = ""

    def prepare(self, ctx: Context, registry: Registry) -> None:
        if registry.name != "ours":
            return
        sizes = ctx.sizes
        with Connection(registry.endpoint) as connection:
            config, layer = push_base_blobs(connection, BIG)
        items = [
            (f"t{i:05d}", image_manifest(config, layer, f"ui tag {i}"))
            for i in range(sizes.ui_tags)
        ]
        put_manifests(registry.endpoint, BIG, items, 8)
        repos = [f"bench/ui-r{i:04d}" for i in range(sizes.ui_repositories - 1)]
        # (A connection of its own: one left idle while the tags went in is closed by now.)
        with Connection(registry.endpoint) as connection:
            for repo in repos:
                for digest, _ in (config, layer):
                    connection.request(
                        "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={BIG}"
                    ).expect(201, f"mount into {repo}")
        per_repo = [(repo, image_manifest(config, layer, repo)) for repo in repos]
        _put_one_each(registry, per_repo)
        self.digest = sha256_digest(items[0][1])

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        if registry.name != "ours":
            return {}
        tags, repositories = ctx.sizes.ui_tags, ctx.sizes.ui_repositories
        middle_repo = f"bench/ui-r{repositories // 2:04d}"
        checks = {
            "catalog": ("/ui/", 'id="repositories"'),
            "catalog_search": (f"/ui/?q=ui-r{repositories // 3:04d}", 'id="repositories"'),
            "catalog_deep": (f"/ui/?after={middle_repo}", 'id="repositories"'),
            "tags": (f"/ui/repositories/{BIG}", f'<span id="tag-count">{tags}</span>'),
            "tags_deep": (
                f"/ui/repositories/{BIG}?sort=name&after=t{tags // 2:05d}",
                f'data-tag="t{tags // 2 + 1:05d}"',
            ),
            "tags_filter": (f"/ui/repositories/{BIG}?q=t0012", 'data-tag="t00123"'),
            "manifest": (f"/ui/repositories/{BIG}/-/manifests/{self.digest}", 'id="config"'),
            "overview": ("/ui/overview", 'id="figures"'),
        }
        figures: dict[str, float] = {}
        with Connection(registry.endpoint) as connection, ctx.timed("pages"):
            for key, (path, expected) in checks.items():
                latencies = []
                for _ in range(PAGE_REQUESTS):
                    started = time.perf_counter()
                    answer = connection.request("GET", path)
                    latencies.append(time.perf_counter() - started)
                    answer.expect(200, f"GET {path}")
                if expected not in answer.body.decode():
                    raise Failure(f"GET {path}: the page lacks {expected!r}")
                figures[f"{key}_p50"] = percentile(latencies, 0.50) * 1000
                figures[f"{key}_p99"] = percentile(latencies, 0.99) * 1000
        return figures


def _put_one_each(registry: Registry, items: list[tuple[str, bytes]]) -> None:
    """One tag ``v1`` in each repository of ``items``."""
    with Connection(registry.endpoint) as connection:
        for repo, manifest in items:
            connection.put_manifest(repo, "v1", manifest)
