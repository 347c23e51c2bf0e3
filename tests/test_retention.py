"""Retention (the policies file's ``retention`` rules): ``registry-admin retention`` removes
exactly the tags and untagged manifests the rules say, and its dry run predicts it exactly.
Ages are set by moving the rows' times back in the database (the registry's clock is the
database's rows), pulls are recorded by real GETs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import running_registry
from tests.registry import OCI_INDEX, OCI_MANIFEST, RegistryUnderTest, sha256
from tests.test_referrers import push_referrer

RULES = {
    "immutable_tags": [{"repositories": ["age/*"], "tags": ["v*"]}],
    "retention": [
        {"repositories": ["last/*"], "keep_last": 2},
        {
            "repositories": ["age/*"],
            "older_than": "7d",
            "unless_pulled_within": "2d",
            "protect": "release-.*",
        },
        {"repositories": ["untagged/*"], "untagged_older_than": "1h"},
    ],
}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    root = tmp_path_factory.mktemp(f"retention-{request.param}")
    policies = root / "policies.yaml"
    policies.write_text(json.dumps(RULES))
    with running_registry(request.param, root, policies_file=str(policies)) as running:
        yield running


def age(registry: RegistryUnderTest, statement: str, **values: object) -> None:
    """Move rows' times back: ``statement`` is an UPDATE with bind parameters."""
    registry.execute(statement, **values)


def days_ago(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)


def retention(registry: RegistryUnderTest, *flags: str) -> list[str]:
    """Run ``registry-admin retention``; what it says would go (a dry run)."""
    ran = registry.admin("retention", *flags)
    assert ran.returncode == 0, ran.stderr
    return sorted(
        line.split("would delete ", 1)[1]
        for line in ran.stdout.splitlines()
        if "would delete " in line
    )


def tags(registry: RegistryUnderTest, repo: str) -> list[str]:
    answer = registry.http.get(f"/v2/{repo}/tags/list")
    return sorted(answer.json()["tags"] or []) if answer.status_code == 200 else []


def test_retention_removes_exactly_what_the_rules_say_and_the_dry_run_predicts_it(
    registry: RegistryUnderTest, repo: str
) -> None:
    last, aged, untagged = f"last/{repo}", f"age/{repo}", f"untagged/{repo}"
    # keep_last 2: four tags pushed one after the other; the two oldest go.
    for tag in ("a", "b", "c", "d"):
        registry.push_image(last, tag, layers=[tag.encode()])
    # older_than 7d unless pulled within 2d, protect release-*, v* immutable.
    for tag in ("old", "recent", "pulled", "pulled-long-ago", "release-1", "v1"):
        registry.push_image(aged, tag, layers=[tag.encode()])
    assert registry.http.get(f"/v2/{aged}/manifests/pulled").status_code == 200
    age(
        registry,
        "UPDATE tags SET updated_at = :when WHERE name <> 'recent' AND repository_id = "
        "(SELECT id FROM repositories WHERE name = :repo)",
        when=days_ago(10),
        repo=aged,
    )
    age(
        registry,
        "UPDATE tags SET pulled_at = :when WHERE name = 'pulled-long-ago' AND repository_id = "
        "(SELECT id FROM repositories WHERE name = :repo)",
        when=days_ago(5),
        repo=aged,
    )
    # untagged_older_than 1h: an old untagged image goes, a young one stays; an untagged
    # referrer of a tagged image stays; an old untagged index goes with its platforms.
    _, tagged = registry.push_image(untagged, "kept", layers=[b"kept"])
    signature = push_referrer(registry, untagged, tagged, artifact_type="application/x-sig")
    _, lonely = registry.push_image(untagged, "gone", layers=[b"lonely"])
    registry.http.delete(f"/v2/{untagged}/manifests/gone")
    child_one, one = registry.push_image(untagged, "p1", layers=[b"p1"])
    child_two, two = registry.push_image(untagged, "p2", layers=[b"p2"])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b)}
            for d, b in ((one, child_one), (two, child_two))
        ],
    }
    body = json.dumps(index).encode()
    assert registry.push_manifest(untagged, sha256(body), body, OCI_INDEX).status_code == 201
    for tag in ("p1", "p2"):
        registry.http.delete(f"/v2/{untagged}/manifests/{tag}")
    age(
        registry,
        "UPDATE manifests SET created_at = :when WHERE repository_id = "
        "(SELECT id FROM repositories WHERE name = :repo)",
        when=days_ago(1),
        repo=untagged,
    )
    _, young = registry.push_image(untagged, "young", layers=[b"young"])
    registry.http.delete(f"/v2/{untagged}/manifests/young")

    expected = sorted(
        [
            f"{last}:a",
            f"{last}:b",
            f"{aged}:old",
            f"{aged}:pulled-long-ago",
            f"{untagged}@{lonely}",
            f"{untagged}@{sha256(body)}",
            f"{untagged}@{one}",
            f"{untagged}@{two}",
        ]
    )
    predicted = [line for line in retention(registry, "--dry-run") if repo in line]
    assert predicted == expected
    # The dry run removed nothing.
    assert tags(registry, last) == ["a", "b", "c", "d"]
    assert registry.http.head(f"/v2/{untagged}/manifests/{lonely}").status_code == 200

    retention(registry)
    assert tags(registry, last) == ["c", "d"]
    assert tags(registry, aged) == ["pulled", "recent", "release-1", "v1"]
    for digest, status in (
        (tagged, 200),
        (signature, 200),
        (young, 200),
        (lonely, 404),
        (sha256(body), 404),
        (one, 404),
        (two, 404),
    ):
        head = registry.http.head(
            f"/v2/{untagged}/manifests/{digest}", headers={"Accept": f"{OCI_MANIFEST},{OCI_INDEX}"}
        )
        assert head.status_code == status, digest
    # A second run finds nothing more to do.
    assert [line for line in retention(registry, "--dry-run") if repo in line] == []


def test_pulls_are_recorded_only_where_a_rule_asks_for_them(
    registry: RegistryUnderTest, repo: str
) -> None:
    aged, other = f"age/{repo}", f"last/{repo}"
    for name in (aged, other):
        registry.push_image(name, "t", layers=[b"pulls"])
        assert registry.http.get(f"/v2/{name}/manifests/t").status_code == 200
    engine = create_engine(registry.settings.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT r.name, t.pulled_at FROM tags t JOIN repositories r "
                    "ON r.id = t.repository_id WHERE r.name IN (:a, :b)"
                ),
                {"a": aged, "b": other},
            )
            pulled = {name: when for name, when in rows}
    finally:
        engine.dispose()
    assert pulled[aged] is not None
    assert pulled[other] is None
