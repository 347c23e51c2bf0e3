"""Pushing, pulling and deleting manifests (OCI Distribution Spec, "Pushing manifests",
"Pulling manifests", "Deleting manifests"), for OCI and Docker manifests and indexes."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from shared.db import make_engine
from tests.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryUnderTest,
    error_codes,
    eventually,
    sha256,
)


def test_push_by_tag_then_pull_by_tag_and_by_digest(registry: RegistryUnderTest, repo: str) -> None:
    body, digest = registry.push_image(repo, "v1")
    for reference in ("v1", digest):
        response = registry.http.get(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )
        assert response.status_code == 200
        assert response.content == body  # the exact bytes pushed
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == digest
        head = registry.http.head(f"/v2/{repo}/manifests/{reference}")
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert head.headers["Docker-Content-Digest"] == digest
        assert head.content == b""


def test_put_answers_201_with_location_and_digest(registry: RegistryUnderTest, repo: str) -> None:
    config = registry.push_blob(repo, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }
    body = json.dumps(manifest).encode()
    response = registry.push_manifest(repo, "latest", body)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/manifests/{sha256(body)}"
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    assert "OCI-Subject" not in response.headers


def test_push_by_digest_checks_the_digest(registry: RegistryUnderTest, repo: str) -> None:
    body, digest = registry.push_image(repo, "v1")
    assert registry.push_manifest(repo, digest, body).status_code == 201
    wrong = registry.push_manifest(repo, sha256(b"other"), body)
    assert wrong.status_code == 400
    assert error_codes(wrong) == ["DIGEST_INVALID"]


def test_unknown_fields_and_nulls_are_kept_byte_for_byte(
    registry: RegistryUnderTest, repo: str
) -> None:
    config = registry.push_blob(repo, b"{}")
    descriptor = f'"mediaType": "{OCI_CONFIG}", "digest": "{config}", "size": 2'
    body = (
        '{\n\t"schemaVersion": 2,\n\t"config": {' + descriptor + ', "data": "e30=", '
        '"newUnspecifiedField": null},\n\t"layers": [],\n\t"extra": {"x": [1, 2]}\n}'
    ).encode()
    response = registry.push_manifest(repo, "odd", body)
    assert response.status_code == 201, response.text
    assert registry.http.get(f"/v2/{repo}/manifests/odd").content == body


def test_docker_schema2_manifest_and_manifest_list(registry: RegistryUnderTest, repo: str) -> None:
    config = registry.push_blob(repo, b'{"os":"linux"}')
    layer = registry.push_blob(repo, b"docker layer")
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config,
            "size": 14,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": layer,
                "size": 12,
            }
        ],
    }
    body = json.dumps(manifest).encode()
    assert registry.push_manifest(repo, "docker", body, DOCKER_MANIFEST).status_code == 201
    listing = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": sha256(body),
                "size": len(body),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    list_body = json.dumps(listing).encode()
    assert registry.push_manifest(repo, "list", list_body, DOCKER_MANIFEST_LIST).status_code == 201
    response = registry.http.get(
        f"/v2/{repo}/manifests/list", headers={"Accept": DOCKER_MANIFEST_LIST}
    )
    assert response.headers["Content-Type"] == DOCKER_MANIFEST_LIST
    assert response.content == list_body


def test_oci_index_of_manifests_in_the_repository(registry: RegistryUnderTest, repo: str) -> None:
    amd, amd_digest = registry.push_image(repo, "amd64", [b"amd64 layer"])
    arm, arm_digest = registry.push_image(repo, "arm64", [b"arm64 layer"])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": amd_digest,
                "size": len(amd),
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": arm_digest,
                "size": len(arm),
                "platform": {"architecture": "arm64", "os": "linux"},
            },
        ],
    }
    response = registry.push_manifest(repo, "multi", index, OCI_INDEX)
    assert response.status_code == 201
    got = registry.http.get(
        f"/v2/{repo}/manifests/multi", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
    )
    assert got.headers["Content-Type"] == OCI_INDEX
    assert json.loads(got.content)["manifests"][1]["digest"] == arm_digest


def test_an_index_is_withheld_from_a_client_that_cannot_read_indexes(
    registry: RegistryUnderTest, repo: str
) -> None:
    _, digest = registry.push_image(repo, "one")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": 1}],
        }
    ).encode()
    assert registry.push_manifest(repo, "index", body, OCI_INDEX).status_code == 201
    response = registry.http.get(f"/v2/{repo}/manifests/index", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 404
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]


def test_index_referencing_an_unknown_manifest_is_refused(
    registry: RegistryUnderTest, repo: str
) -> None:
    missing = sha256(b"no such manifest")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}],
    }
    response = registry.push_manifest(repo, "bad", index, OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert missing in response.json()["errors"][0]["detail"]


def test_manifest_referencing_a_blob_the_repository_lacks_is_refused(
    registry: RegistryUnderTest, repo: str
) -> None:
    config = registry.push_blob(repo, b"{}")
    elsewhere = registry.push_blob(f"{repo}-other", b"layer in another repository")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": elsewhere, "size": 27}],
    }
    response = registry.push_manifest(repo, "v1", manifest)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_subject_that_does_not_exist_yet_is_accepted_and_echoed(
    registry: RegistryUnderTest, repo: str
) -> None:
    subject = sha256(b"a manifest pushed later")
    _, _digest = registry.push_image(
        repo, "sig", subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 23}
    )
    config = registry.push_blob(repo, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/example",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 23},
    }
    response = registry.push_manifest(repo, sha256(json.dumps(manifest).encode()), manifest)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject


def test_retagging_moves_the_tag(registry: RegistryUnderTest, repo: str) -> None:
    _, first = registry.push_image(repo, "latest", [b"first"])
    _, second = registry.push_image(repo, "latest", [b"second"])
    assert first != second
    assert (
        registry.http.head(f"/v2/{repo}/manifests/latest").headers["Docker-Content-Digest"]
        == second
    )
    assert registry.http.head(f"/v2/{repo}/manifests/{first}").status_code == 200


def test_same_manifest_under_several_tags(registry: RegistryUnderTest, repo: str) -> None:
    body, digest = registry.push_image(repo, "test0")
    for tag in ("test1", "test2", "test3"):
        response = registry.push_manifest(repo, tag, body)
        assert response.status_code == 201
        assert response.headers["Location"] == f"/v2/{repo}/manifests/{digest}"


def test_concurrent_pushes_of_one_manifest_and_tags_all_succeed_once(
    registry: RegistryUnderTest, repo: str
) -> None:
    """Clients pushing the same manifest at the same moment, under one tag, under their own
    tags and by digest, into a repository that does not exist yet: every push is answered 201,
    and the repository holds one manifest with every tag on it."""
    body, digest = registry.push_image(f"{repo}/source", "v1")
    source = json.loads(body)
    blobs = [source["config"], *source["layers"]]
    for blob in blobs:
        mounted = registry.http.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": blob["digest"], "from": f"{repo}/source"}
        )
        assert mounted.status_code == 201, mounted.text
    references = ["shared"] * 4 + [f"own-{i}" for i in range(4)] + [digest] * 2
    start = threading.Barrier(len(references))

    def push(reference: str) -> int:
        with httpx.Client(base_url=registry.url, timeout=30) as client:
            client.get("/v2/")  # connected before the start
            start.wait()
            answer = client.put(
                f"/v2/{repo}/manifests/{reference}",
                content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            return answer.status_code

    with ThreadPoolExecutor(len(references)) as pool:
        statuses = list(pool.map(push, references))
    assert statuses == [201] * len(references)
    tags = registry.http.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert sorted(tags) == sorted({"shared", *(f"own-{i}" for i in range(4))})
    for tag in tags:
        head = registry.http.head(f"/v2/{repo}/manifests/{tag}")
        assert head.headers["Docker-Content-Digest"] == digest
    rows = registry.query(
        "SELECT COUNT(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        " WHERE r.name = :name",
        name=repo,
    )
    assert rows == [(1,)]


def test_delete_by_tag_removes_only_the_tag(registry: RegistryUnderTest, repo: str) -> None:
    _, digest = registry.push_image(repo, "v1")
    assert (
        registry.push_manifest(
            repo, "v2", registry.http.get(f"/v2/{repo}/manifests/v1").content
        ).status_code
        == 201
    )
    assert registry.http.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert registry.http.get(f"/v2/{repo}/manifests/v2").status_code == 200
    assert registry.http.get(f"/v2/{repo}/manifests/{digest}").status_code == 200


def test_a_tag_deleted_while_a_push_moves_it_is_reviewed_where_it_pointed_last(
    registry: RegistryUnderTest, repo: str
) -> None:
    """Garbage collection learns of a manifest a deleted tag leaves untagged by a review of
    it: when a push moves the tag while the DELETE runs, the review is of the manifest the tag
    pointed at when it went, not of the one it pointed at when the DELETE began."""
    registry.push_image(repo, "moving", layers=[b"first"])
    _, second = registry.push_image(repo, "stays", layers=[b"second"])
    ids = dict(
        registry.query(
            "SELECT m.digest, m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id"
            " WHERE r.name = :repo",
            repo=repo,
        )
    )
    reviewed = "SELECT manifest_id FROM gc_manifest_reviews WHERE manifest_id = :id"
    assert not registry.query(reviewed, id=ids[second])
    engine = make_engine(registry.settings.database_url)
    try:
        with engine.connect() as push, ThreadPoolExecutor(1) as pool:
            moving = push.begin()  # a push moving the tag, not yet committed
            push.execute(
                text(
                    "UPDATE tags SET manifest_id = :to WHERE name = 'moving' AND repository_id ="
                    " (SELECT id FROM repositories WHERE name = :repo)"
                ),
                {"to": ids[second], "repo": repo},
            )
            deleting = pool.submit(registry.http.delete, f"/v2/{repo}/manifests/moving")
            waiting_for_the_push(registry, deleting)
            moving.commit()
            assert deleting.result(timeout=30).status_code == 202
    finally:
        engine.dispose()
    assert registry.http.get(f"/v2/{repo}/manifests/moving").status_code == 404
    assert registry.query(reviewed, id=ids[second])


def waiting_for_the_push(registry: RegistryUnderTest, request: Future[httpx.Response]) -> None:
    """Until ``request`` waits for a lock held by another transaction (on SQLite, the one
    writer's, which it waits for from its first statement: a moment is enough)."""
    if registry.backend != "mariadb":
        time.sleep(0.5)
    else:
        eventually(
            lambda: bool(
                registry.query(
                    "SELECT 1 FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
                )
            ),
            what="the DELETE waiting for the push's lock",
        )
    assert not request.done(), request.result()


def test_delete_by_digest_removes_the_manifest_and_its_tags(
    registry: RegistryUnderTest, repo: str
) -> None:
    body, digest = registry.push_image(repo, "v1")
    assert registry.push_manifest(repo, "v2", body).status_code == 201
    assert registry.http.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    for reference in ("v1", "v2", digest):
        response = registry.http.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    tags = registry.http.get(f"/v2/{repo}/tags/list")
    assert tags.status_code == 200
    assert tags.json()["tags"] == []
    again = registry.http.delete(f"/v2/{repo}/manifests/{digest}")
    assert again.status_code == 404
    assert error_codes(again) == ["MANIFEST_UNKNOWN"]


def test_blobs_of_a_deleted_manifest_can_then_be_deleted(
    registry: RegistryUnderTest, repo: str
) -> None:
    _, digest = registry.push_image(repo, "v1", [b"only layer"])
    assert registry.http.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    assert registry.http.delete(f"/v2/{repo}/blobs/{sha256(b'only layer')}").status_code == 202
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(b'only layer')}").status_code == 404


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-leading-dash", "x" * 129])
def test_a_reference_that_cannot_be_a_tag_names_no_manifest(
    registry: RegistryUnderTest, repo: str, reference: str
) -> None:
    registry.push_image(repo, "v1")
    assert registry.http.get(f"/v2/{repo}/manifests/{reference}").status_code == 404
    assert registry.http.head(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_push_to_an_invalid_tag_is_refused(registry: RegistryUnderTest, repo: str) -> None:
    body, _ = registry.push_image(repo, "v1")
    response = registry.push_manifest(repo, ".bad", body)
    assert response.status_code == 400
    assert error_codes(response) == ["TAG_INVALID"]


def test_invalid_json_is_manifest_invalid(registry: RegistryUnderTest, repo: str) -> None:
    for body in (
        b"{not json",
        b"[]",
        b'{"schemaVersion": 1}',
        b'{"schemaVersion": 2, "config": 5}',
        b"\xff\xfe",
    ):
        response = registry.push_manifest(repo, "bad", body)
        assert response.status_code == 400, body
        assert error_codes(response) == ["MANIFEST_INVALID"]


@pytest.mark.parametrize("size", [10**40, 2**63, -1])
def test_a_descriptor_size_beyond_int64_is_manifest_invalid(
    registry: RegistryUnderTest, repo: str, size: int
) -> None:
    config = registry.push_blob(repo, b"{}")
    layer = registry.push_blob(repo, b"a layer")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": size}],
    }
    response = registry.push_manifest(repo, "v1", manifest)
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_unsupported_content_type_is_415(registry: RegistryUnderTest, repo: str) -> None:
    body, _ = registry.push_image(repo, "v1")
    response = registry.push_manifest(repo, "v2", body, "text/plain")
    assert response.status_code == 415
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_content_type_that_contradicts_the_manifest_is_refused(
    registry: RegistryUnderTest, repo: str
) -> None:
    body, _ = registry.push_image(repo, "v1")
    response = registry.push_manifest(repo, "v2", body, OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_manifest_over_4_mib_is_413(registry: RegistryUnderTest, repo: str) -> None:
    body, _ = registry.push_image(repo, "v1")
    huge = body[:-1] + b', "annotations": {"pad": "' + b"x" * (4 * 1024 * 1024) + b'"}}'
    response = registry.push_manifest(repo, "huge", huge)
    assert response.status_code == 413
    assert registry.http.get(f"/v2/{repo}/manifests/huge").status_code == 404


def test_manifest_just_under_4_mib_is_accepted(registry: RegistryUnderTest, repo: str) -> None:
    body, _ = registry.push_image(repo, "v1")
    pad = 4 * 1024 * 1024 - len(body) - 100
    big = body[:-1] + b', "annotations": {"pad": "' + b"x" * pad + b'"}}'
    assert len(big) < 4 * 1024 * 1024
    response = registry.push_manifest(repo, "big", big)
    assert response.status_code == 201, response.text
    assert registry.http.get(f"/v2/{repo}/manifests/big").content == big
