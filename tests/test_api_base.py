"""The API version check (spec: "Determining support", end-1) and answers every response shares."""

from __future__ import annotations

from tests.registry import RegistryUnderTest, error_codes


def test_base_endpoint_answers_200_with_the_api_version_header(registry: RegistryUnderTest) -> None:
    response = registry.http.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_ping_answers_ok(registry: RegistryUnderTest) -> None:
    response = registry.http.get("/v2/_ping")
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}


def test_errors_carry_the_api_version_header_and_the_spec_body(
    registry: RegistryUnderTest, repo: str
) -> None:
    response = registry.http.get(f"/v2/{repo}/manifests/latest")
    assert response.status_code == 404
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    error = response.json()["errors"][0]
    assert error["message"] == "manifest unknown"
    assert isinstance(error["detail"], str) and repo in error["detail"]


def test_unknown_endpoint_is_404_in_the_spec_format(registry: RegistryUnderTest) -> None:
    response = registry.http.get("/v2/foo/bar/unknown-thing")
    assert response.status_code == 404
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert response.json()["errors"][0]["code"] == "NOT_FOUND"


def test_method_not_allowed_is_405_unsupported(registry: RegistryUnderTest, repo: str) -> None:
    response = registry.http.post(f"/v2/{repo}/tags/list")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
    assert "GET" in response.headers["Allow"]
