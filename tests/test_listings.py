"""Listing tags and repositories (OCI Distribution Spec, "Listing Tags"; the catalog of the
Docker Registry HTTP API V2), with ``n``/``last`` pagination and ``Link`` headers."""

from __future__ import annotations

import re

from tests.registry import RegistryUnderTest, error_codes

TAGS = ["B", "a", "alpha", "beta", "v1.0", "v1.10", "v1.2", "z_last"]


def push_tags(registry: RegistryUnderTest, repo: str) -> None:
    body, _ = registry.push_image(repo, TAGS[0])
    for tag in TAGS[1:]:
        assert registry.push_manifest(repo, tag, body).status_code == 201


def test_tags_are_listed_in_lexical_order(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    response = registry.http.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": repo, "tags": sorted(TAGS)}
    assert "Link" not in response.headers


def test_n_returns_exactly_n_tags_and_a_link_to_the_rest(
    registry: RegistryUnderTest, repo: str
) -> None:
    push_tags(registry, repo)
    response = registry.http.get(f"/v2/{repo}/tags/list", params={"n": 3})
    assert response.json()["tags"] == sorted(TAGS)[:3]
    link = response.headers["Link"]
    assert re.fullmatch(r'<(/v2/[^>]+)>; rel="next"', link)


def test_following_links_walks_every_tag_once(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    seen: list[str] = []
    url = f"/v2/{repo}/tags/list?n=3"
    while url:
        response = registry.http.get(url)
        assert response.status_code == 200
        seen += response.json()["tags"]
        match = re.match(r"<([^>]+)>", response.headers.get("Link", ""))
        url = match.group(1) if match else ""
    assert seen == sorted(TAGS)


def test_last_is_exclusive(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    response = registry.http.get(f"/v2/{repo}/tags/list", params={"last": "alpha", "n": 2})
    assert response.json()["tags"] == ["beta", "v1.0"]
    without_n = registry.http.get(f"/v2/{repo}/tags/list", params={"last": "v1.2"})
    assert without_n.json()["tags"] == ["z_last"]


def test_n_zero_is_an_empty_list_without_link(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    response = registry.http.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert response.status_code == 200
    assert response.json()["tags"] == []
    assert "Link" not in response.headers


def test_invalid_n_is_refused(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    for n in ("-1", "abc", "1.5", "100000000"):
        response = registry.http.get(f"/v2/{repo}/tags/list", params={"n": n})
        assert response.status_code == 400, n
        assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"]


# Characters Python calls digits that are no number in HTTP: superscript two, circled one
# (str.isdigit() says yes, int() refuses them), Arabic-Indic three and fullwidth one (int()
# reads them as 3 and 1), and what int() forgives: a sign, white space, an underscore.
NOT_ASCII_NUMBERS = ["%C2%B2", "%E2%91%A0", "%D9%A3", "%EF%BC%91", "%2B5", "%205", "1_0", "5%0A"]


def test_n_is_ascii_digits_only_for_tags(registry: RegistryUnderTest, repo: str) -> None:
    push_tags(registry, repo)
    for n in NOT_ASCII_NUMBERS:
        response = registry.http.get(f"/v2/{repo}/tags/list?n={n}")
        assert response.status_code == 400, (n, response.text)
        assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"], n


def test_n_is_ascii_digits_only_for_the_catalog(registry: RegistryUnderTest) -> None:
    for n in NOT_ASCII_NUMBERS:
        response = registry.http.get(f"/v2/_catalog?n={n}")
        assert response.status_code == 400, (n, response.text)
        assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"], n


def test_tags_of_an_unknown_repository_is_404_name_unknown(
    registry: RegistryUnderTest, repo: str
) -> None:
    response = registry.http.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_catalog_lists_repositories_with_pagination(registry: RegistryUnderTest, repo: str) -> None:
    names = [f"{repo}/r{i}" for i in range(5)]
    for name in names:
        registry.push_blob(name, b"catalog")
    everything = registry.http.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
    assert everything == sorted(everything)
    assert set(names) <= set(everything)
    page = registry.http.get("/v2/_catalog", params={"n": 2, "last": names[0]})
    assert page.json()["repositories"] == names[1:3]
    assert page.headers["Link"].endswith('rel="next"')
