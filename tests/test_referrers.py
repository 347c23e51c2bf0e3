"""Listing referrers (OCI Distribution Spec, "Listing Referrers"): the manifests whose
``subject`` is a given manifest, as an OCI image index, with the ``artifactType`` filter."""

from __future__ import annotations

import json

from tests.registry import OCI_INDEX, OCI_MANIFEST, RegistryUnderTest, error_codes, sha256

EMPTY = "application/vnd.oci.empty.v1+json"


def push_referrer(
    registry: RegistryUnderTest,
    repo: str,
    subject: str,
    *,
    artifact_type: str | None = None,
    config_type: str = EMPTY,
    annotation: str | None = None,
) -> str:
    config = registry.push_blob(repo, b"{}")
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config, "size": 2},
        "layers": [{"mediaType": EMPTY, "digest": config, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotation:
        manifest["annotations"] = {"org.example.test": annotation}
    body = json.dumps(manifest).encode()
    response = registry.push_manifest(repo, sha256(body), body)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject
    return sha256(body)


def test_unknown_subject_has_an_empty_list(registry: RegistryUnderTest, repo: str) -> None:
    registry.push_image(repo, "v1")
    response = registry.http.get(f"/v2/{repo}/referrers/{sha256(b'hello world')}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_are_listed_with_artifact_type_and_annotations(
    registry: RegistryUnderTest, repo: str
) -> None:
    _, subject = registry.push_image(repo, "v1")
    signature = push_referrer(
        registry, repo, subject, artifact_type="application/example.sig", annotation="sig"
    )
    sbom = push_referrer(
        registry, repo, subject, config_type="application/example.sbom", annotation="sbom"
    )
    response = registry.http.get(f"/v2/{repo}/referrers/{subject}")
    assert response.status_code == 200
    listed = {d["digest"]: d for d in response.json()["manifests"]}
    assert set(listed) == {signature, sbom}
    assert listed[signature]["artifactType"] == "application/example.sig"
    assert listed[sbom]["artifactType"] == "application/example.sbom"  # from config.mediaType
    assert listed[signature]["annotations"] == {"org.example.test": "sig"}
    assert listed[sbom]["mediaType"] == OCI_MANIFEST
    assert "OCI-Filters-Applied" not in response.headers


def test_artifact_type_filter(registry: RegistryUnderTest, repo: str) -> None:
    _, subject = registry.push_image(repo, "v1")
    signature = push_referrer(registry, repo, subject, artifact_type="application/example.sig")
    push_referrer(registry, repo, subject, artifact_type="application/example.sbom")
    response = registry.http.get(
        f"/v2/{repo}/referrers/{subject}", params={"artifactType": "application/example.sig"}
    )
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in response.json()["manifests"]] == [signature]


def test_an_index_can_be_a_referrer(registry: RegistryUnderTest, repo: str) -> None:
    _, subject = registry.push_image(repo, "v1")
    child = push_referrer(registry, repo, subject, artifact_type="application/example.sig")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/example.bundle",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 10}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 10},
    }
    response = registry.push_manifest(repo, "bundle", index, OCI_INDEX)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject
    listed = registry.http.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"]
    assert {d["mediaType"] for d in listed} == {OCI_MANIFEST, OCI_INDEX}


def test_deleted_referrers_disappear(registry: RegistryUnderTest, repo: str) -> None:
    _, subject = registry.push_image(repo, "v1")
    signature = push_referrer(registry, repo, subject, artifact_type="application/example.sig")
    assert registry.http.delete(f"/v2/{repo}/manifests/{signature}").status_code == 202
    assert registry.http.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"] == []


def test_invalid_digest_is_400(registry: RegistryUnderTest, repo: str) -> None:
    response = registry.http.get(f"/v2/{repo}/referrers/sha256:nothex")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
