"""Pushing blobs (OCI Distribution Spec, "Pushing blobs": POST then PUT, single POST, chunked
PATCHes, upload status, cancel, cross-repository mount)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.registry import RegistryUnderTest, error_codes, eventually, sha256
from tests.test_operations import metric


def start_upload(registry: RegistryUnderTest, repo: str) -> str:
    response = registry.http.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def test_post_starts_an_upload_session(registry: RegistryUnderTest, repo: str) -> None:
    response = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    upload_uuid = response.headers["Docker-Upload-UUID"]
    assert response.headers["Location"] == f"/v2/{repo}/blobs/uploads/{upload_uuid}"
    assert response.headers["Range"] == "0-0"


def test_post_then_put_stores_the_blob(registry: RegistryUnderTest, repo: str) -> None:
    data = os.urandom(1000)
    location = start_upload(registry, repo)
    response = registry.http.put(location, params={"digest": sha256(data)}, content=data)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert response.headers["Docker-Content-Digest"] == sha256(data)
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_single_post_with_digest_stores_the_blob(registry: RegistryUnderTest, repo: str) -> None:
    data = b"monolithic" * 100
    response = registry.http.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": sha256(data)},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_chunked_upload_in_order_with_content_range(registry: RegistryUnderTest, repo: str) -> None:
    blob = os.urandom(42)
    location = start_upload(registry, repo)

    first = registry.http.patch(
        location,
        content=blob[:22],
        headers={"Content-Range": "0-21", "Content-Type": "application/octet-stream"},
    )
    assert first.status_code == 202
    assert first.headers["Range"] == "0-21"
    assert first.headers["Location"]

    # The same chunk again is out of order: 416, and the session stays as it was.
    again = registry.http.patch(location, content=blob[:22], headers={"Content-Range": "0-21"})
    assert again.status_code == 416

    status = registry.http.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-21"
    assert status.headers["Location"]

    second = registry.http.patch(
        status.headers["Location"], content=blob[22:], headers={"Content-Range": "22-41"}
    )
    assert second.status_code == 202
    assert second.headers["Range"] == "0-41"

    done = registry.http.put(second.headers["Location"], params={"digest": sha256(blob)})
    assert done.status_code == 201
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob


def test_first_chunk_that_does_not_start_at_zero_is_416(
    registry: RegistryUnderTest, repo: str
) -> None:
    location = start_upload(registry, repo)
    response = registry.http.patch(location, content=b"x" * 20, headers={"Content-Range": "22-41"})
    assert response.status_code == 416
    assert registry.http.get(location).headers["Range"] == "0-0"


def test_chunk_whose_length_differs_from_its_range_is_refused_and_not_kept(
    registry: RegistryUnderTest, repo: str
) -> None:
    location = start_upload(registry, repo)
    assert (
        registry.http.patch(
            location, content=b"a" * 10, headers={"Content-Range": "0-9"}
        ).status_code
        == 202
    )
    wrong = registry.http.patch(location, content=b"b" * 5, headers={"Content-Range": "10-19"})
    assert wrong.status_code == 416
    assert registry.http.get(location).headers["Range"] == "0-9"
    data = b"a" * 10 + b"c" * 10
    assert (
        registry.http.patch(
            location, content=b"c" * 10, headers={"Content-Range": "10-19"}
        ).status_code
        == 202
    )
    assert registry.http.put(location, params={"digest": sha256(data)}).status_code == 201
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_streamed_chunks_without_content_range_and_a_final_chunk_in_put(
    registry: RegistryUnderTest, repo: str
) -> None:
    parts = [os.urandom(300_000), os.urandom(1), os.urandom(700_001)]
    data = b"".join(parts)
    location = start_upload(registry, repo)
    for part in parts[:2]:
        response = registry.http.patch(location, content=part)
        assert response.status_code == 202
        location = response.headers["Location"]
    assert response.headers["Range"] == f"0-{len(parts[0]) + len(parts[1]) - 1}"
    done = registry.http.put(location, params={"digest": sha256(data)}, content=parts[2])
    assert done.status_code == 201
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_chunked_transfer_encoding_body_is_accepted(registry: RegistryUnderTest, repo: str) -> None:
    data = os.urandom(200_000)

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    location = start_upload(registry, repo)
    response = registry.http.patch(location, content=body())
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    assert registry.http.put(location, params={"digest": sha256(data)}).status_code == 201


def test_a_finished_upload_is_unknown_afterwards(registry: RegistryUnderTest, repo: str) -> None:
    location = start_upload(registry, repo)
    assert (
        registry.http.put(location, params={"digest": sha256(b"x")}, content=b"x").status_code
        == 201
    )
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = registry.http.request(
            method, location, params={"digest": sha256(b"x")} if method == "PUT" else None
        )
        assert response.status_code == 404, method
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_digest_mismatch_is_refused_and_nothing_becomes_visible(
    registry: RegistryUnderTest, repo: str
) -> None:
    location = start_upload(registry, repo)
    claimed = sha256(b"something else")
    response = registry.http.put(location, params={"digest": claimed}, content=b"the real content")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert registry.http.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(b'the real content')}").status_code == 404
    assert registry.http.get(location).status_code == 404
    upload_uuid = location.rsplit("/", 1)[1]
    # The janitor deletes the upload's data once it hears the upload was cancelled.
    eventually(
        lambda: not any(upload_uuid in path for path in registry.stored_files()),
        what="upload data deleted",
    )


def test_put_without_digest_is_refused(registry: RegistryUnderTest, repo: str) -> None:
    location = start_upload(registry, repo)
    response = registry.http.put(location, content=b"abc")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_cancel_deletes_the_session_and_its_data(registry: RegistryUnderTest, repo: str) -> None:
    location = start_upload(registry, repo)
    upload_uuid = location.rsplit("/", 1)[1]
    assert registry.http.patch(location, content=b"partial data").status_code == 202
    assert any(upload_uuid in path for path in registry.stored_files())
    response = registry.http.delete(location)
    assert response.status_code == 204
    assert registry.http.get(location).status_code == 404
    eventually(
        lambda: not any(upload_uuid in path for path in registry.stored_files()),
        what="upload data deleted",
    )
    assert registry.query("SELECT COUNT(*) FROM uploads WHERE uuid = :u", u=upload_uuid)[0][0] == 0


def test_an_upload_belongs_to_its_repository(registry: RegistryUnderTest, repo: str) -> None:
    location = start_upload(registry, repo)
    other = location.replace(f"/v2/{repo}/", f"/v2/{repo}-other/")
    response = registry.http.get(other)
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_sha512_digests_are_verified(registry: RegistryUnderTest, repo: str) -> None:
    data = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = start_upload(registry, repo)
    assert registry.http.patch(location, content=data).status_code == 202
    assert registry.http.put(location, params={"digest": digest}).status_code == 201
    response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert response.content == data
    assert response.headers["Docker-Content-Digest"] == digest


def read_back(registry: RegistryUnderTest) -> float:
    """The bytes the blob service has read back from uploads to verify their digests."""
    settings = registry.settings
    url = f"http://{settings.blob_service_host}:{settings.blob_service_port}/metrics"
    return metric(httpx.get(url, timeout=10).text, "registry_upload_bytes_read_back_total")


def test_completing_an_upload_hashed_as_it_came_reads_nothing_back(
    registry: RegistryUnderTest, repo: str
) -> None:
    """Chunks PATCHed through one blob service, closed by a PUT without a body (as Docker and
    containerd push): the digest is the running hash's, the bytes are not read again. A
    sha512 digest, whose running hash is not kept, reads them back."""
    for algorithm in ("sha256", "sha512"):
        data = os.urandom(300_000)
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        location = start_upload(registry, repo)
        for start in range(0, len(data), 100_000):
            chunk = data[start : start + 100_000]
            answer = registry.http.patch(
                location,
                content=chunk,
                headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
            )
            assert answer.status_code == 202, answer.text
            location = answer.headers["Location"]
        before = read_back(registry)
        closed = registry.http.put(location, params={"digest": digest})
        assert closed.status_code == 201, closed.text
        assert read_back(registry) - before == (0 if algorithm == "sha256" else len(data))
        assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_a_blob_is_stored_once_however_many_repositories_hold_it(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = os.urandom(4096)
    registry.push_blob(f"{repo}/a", data)
    registry.push_blob(f"{repo}/b", data)
    hex_digest = sha256(data).split(":")[1]
    # Once the janitor has moved the upload to the blob's key, and discarded the second copy.
    eventually(
        lambda: (
            [p for p in registry.stored_files() if hex_digest in p]
            == [f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"]
        ),
        what="one object at the blob's key",
    )


def test_a_blob_is_not_readable_through_another_repository(
    registry: RegistryUnderTest, repo: str
) -> None:
    digest = registry.push_blob(f"{repo}/owner", b"private layer")
    response = registry.http.get(f"/v2/{repo}/stranger/blobs/{digest}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


def test_concurrent_uploads_of_the_same_blob_both_succeed(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = os.urandom(2_000_000)

    def push(i: int) -> int:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            location = client.post(f"/v2/{repo}/c{i}/blobs/uploads/").headers["Location"]
            return client.put(location, params={"digest": sha256(data)}, content=data).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(push, range(4))) == [201] * 4
    for i in range(4):
        assert registry.http.get(f"/v2/{repo}/c{i}/blobs/{sha256(data)}").content == data


# --- cross-repository mount ---------------------------------------------------------------


def test_mount_from_a_repository_that_holds_the_blob(
    registry: RegistryUnderTest, repo: str
) -> None:
    digest = registry.push_blob(f"{repo}/source", b"shared layer")
    response = registry.http.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"}
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/target/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert registry.http.get(f"/v2/{repo}/target/blobs/{digest}").content == b"shared layer"


def test_mount_from_a_repository_without_the_blob_starts_an_upload(
    registry: RegistryUnderTest, repo: str
) -> None:
    digest = registry.push_blob(f"{repo}/holder", b"held elsewhere")
    response = registry.http.post(
        f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/empty"}
    )
    assert response.status_code == 202
    assert response.headers["Location"].startswith(f"/v2/{repo}/target/blobs/uploads/")
    assert registry.http.head(f"/v2/{repo}/target/blobs/{digest}").status_code == 404


def test_mount_without_from_finds_the_blob_in_any_repository(
    registry: RegistryUnderTest, repo: str
) -> None:
    digest = registry.push_blob(f"{repo}/somewhere", b"automatic mount")
    response = registry.http.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 201
    assert registry.http.get(f"/v2/{repo}/target/blobs/{digest}").content == b"automatic mount"


def test_mount_of_an_unknown_blob_starts_an_upload(registry: RegistryUnderTest, repo: str) -> None:
    response = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(b"never pushed")}
    )
    assert response.status_code == 202
    assert response.headers["Location"].startswith(f"/v2/{repo}/blobs/uploads/")


def test_mount_with_an_invalid_digest_or_source_is_refused(
    registry: RegistryUnderTest, repo: str
) -> None:
    bad_digest = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:xyz", "from": "a"}
    )
    assert bad_digest.status_code == 400
    assert error_codes(bad_digest) == ["DIGEST_INVALID"]
    bad_source = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(b"x"), "from": "../etc"}
    )
    assert bad_source.status_code == 400
    assert error_codes(bad_source) == ["NAME_INVALID"]
