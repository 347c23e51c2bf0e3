"""One conformance suite for every storage driver (``shared.storage.StorageDriver``): the
filesystem driver, and the OSS driver against the protocol-level OSS server of
``tests/oss_server.py``. Then the OSS driver's faults: the server fails, stalls or drops
requests in the middle of appends, moves, deletes and downloads; the driver raises
``StorageError`` (or retries and succeeds), and the stored data stays right.

With ``REGISTRY_TEST_OSS_URL=oss://<bucket>/<prefix>?endpoint=...`` and credentials
(``REGISTRY_OSS_ACCESS_KEY_ID``/``REGISTRY_OSS_ACCESS_KEY_SECRET`` or
``REGISTRY_OSS_CREDENTIALS_FILE``) in the environment, the conformance suite also runs against
that real bucket (each test under its own prefix, deleted afterwards); the fault tests need the
test server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import oss2
import pytest

from shared.blobs import open_blob
from shared.reference import parse_digest
from shared.settings import Settings
from shared.storage import (
    ObjectNotFound,
    StorageDriver,
    StorageError,
    filesystem,
    keys,
    open_storage,
)
from shared.storage.filesystem import FilesystemDriver
from shared.storage.oss import OssDriver, logical_key, segment_key
from tests.oss_server import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, OssTestServer

T = TypeVar("T")
REAL_BUCKET_URL = os.environ.get("REGISTRY_TEST_OSS_URL", "")
DRIVERS = ["filesystem", "oss", *(["oss-bucket"] if REAL_BUCKET_URL else [])]

# Small sizes, so that segment roll-over, multipart copies and part grouping happen with
# test-sized data. The server refuses CopyObject above the same limit, as OSS does above 1 GB.
KiB = 1024
COPY_LIMIT = 256 * KiB
SMALL = dict(
    segment_size=300 * KiB,
    copy_limit=COPY_LIMIT,
    copy_part_size=256 * KiB,
    upload_part_size=200 * KiB,
    small_piece=256 * KiB,
    page_size=7,
    backoff=0.01,
    max_backoff=0.05,
)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class ClientGone(Exception):
    """Stands for the request body failing midway (a client that disconnected)."""


async def failing(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise ClientGone


async def read_all(
    driver: StorageDriver, key: str, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in driver.read(key, start, end)])


async def listed(driver: StorageDriver, prefix: str) -> dict[str, int]:
    return {info.key: info.size async for info in driver.list(prefix)}


def data(size: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (pattern * (size // len(pattern) + 1))[:size]


@dataclass
class Storage:
    """A driver under test, and what the test may need besides it."""

    kind: str
    driver: StorageDriver
    another: Callable[[], StorageDriver]  # a second driver on the same storage (a replica)
    stored: Callable[[], set[str]]  # the stored objects' keys, as the backend has them


@pytest.fixture(scope="module")
def oss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssTestServer]:
    with OssTestServer(tmp_path_factory.mktemp("oss"), copy_limit=COPY_LIMIT) as server:
        yield server


def make_driver(server: OssTestServer, prefix: str, **options: Any) -> OssDriver:
    bucket = oss2.Bucket(oss2.Auth(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET), server.endpoint, "registry")
    return OssDriver(bucket, prefix, **{**SMALL, "retries": 3, **options})


def _real_bucket_url(prefix: str) -> str:
    parts = urlsplit(REAL_BUCKET_URL)
    path = f"{parts.path.rstrip('/')}/{prefix}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@pytest.fixture(params=DRIVERS)
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, oss_server: OssTestServer
) -> Iterator[Storage]:
    kind: str = request.param
    if kind == "filesystem":
        root = tmp_path / "storage"

        def files() -> set[str]:
            return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

        yield Storage(kind, FilesystemDriver(str(root)), lambda: FilesystemDriver(str(root)), files)
    elif kind == "oss":
        oss_server.clear_faults()
        prefix = f"test-{uuid.uuid4().hex[:12]}"

        def objects() -> set[str]:
            return {
                key.removeprefix(prefix + "/")
                for key in oss_server.object_keys("registry", prefix + "/")
            }

        yield Storage(
            kind,
            make_driver(oss_server, prefix),
            lambda: make_driver(oss_server, prefix),
            objects,
        )
    else:  # a real bucket, from the environment
        url = _real_bucket_url(f"test-{uuid.uuid4().hex[:12]}")
        driver = open_storage(url, Settings())

        def bucket_objects() -> set[str]:
            assert isinstance(driver, OssDriver)
            return {
                item.key.removeprefix(driver.prefix)
                for item in oss2.ObjectIteratorV2(driver.bucket, prefix=driver.prefix)
            }

        try:
            yield Storage(kind, driver, lambda: open_storage(url, Settings()), bucket_objects)
        finally:

            async def clean() -> None:
                async for info in driver.list(""):
                    await driver.delete(info.key)

            run(clean())


# --- the conformance suite ------------------------------------------------------------------


def test_append_creates_then_resumes_from_another_replica(storage: Storage) -> None:
    async def scenario() -> None:
        key = "uploads/u1/data"
        assert await storage.driver.size(key) is None
        assert await storage.driver.append(key, 0, chunks(b"hello ", b"", b"world")) == 11
        assert await storage.driver.size(key) == 11
        other = storage.another()
        assert await other.append(key, 11, chunks(b", again")) == 18
        assert await storage.driver.append(key, 18, chunks(b"!")) == 19
        assert await read_all(storage.driver, key) == b"hello world, again!"
        assert await read_all(other, key) == b"hello world, again!"
        assert await other.size(key) == 19

    run(scenario())


def test_an_empty_append_at_zero_creates_an_empty_object(storage: Storage) -> None:
    async def scenario() -> None:
        assert await storage.driver.append("uploads/empty/data", 0, chunks()) == 0
        assert await storage.driver.size("uploads/empty/data") == 0
        assert await read_all(storage.driver, "uploads/empty/data") == b""

    run(scenario())


def test_large_appends_read_back_in_ranges(storage: Storage) -> None:
    pieces = [data(50 * KiB, 1), data(700 * KiB, 2), data(3, 3), data(310 * KiB, 4)]
    whole = b"".join(pieces)

    async def scenario() -> None:
        key = "uploads/ranges/data"
        offset = 0
        for piece in pieces:
            # in chunks of 64 KiB, as a request body arrives
            parts = [piece[i : i + 64 * KiB] for i in range(0, len(piece), 64 * KiB)]
            offset = await storage.driver.append(key, offset, chunks(*parts))
        assert offset == len(whole)
        assert await storage.driver.size(key) == len(whole)
        assert await read_all(storage.driver, key) == whole
        boundaries = [50 * KiB, 750 * KiB, 750 * KiB + 3]
        spans = [
            (0, 0),
            (0, 99),
            (10, None),
            (50 * KiB - 1, 50 * KiB),  # across pieces
            (boundaries[1] - 2, boundaries[2] + 2),  # across three
            (300 * KiB - 5, 300 * KiB + 5),  # across a roll-over inside one append
            (len(whole) - 1, None),
            (len(whole) - 10, len(whole) + 100),  # an end past the object is cut
            (len(whole), None),  # nothing left
        ]
        for start, end in spans:
            expected = whole[start : None if end is None else end + 1]
            assert await read_all(storage.driver, key, start, end) == expected, (start, end)

    run(scenario())


def test_missing_objects(storage: Storage) -> None:
    async def scenario() -> None:
        assert await storage.driver.size("blobs/nothing/data") is None
        with pytest.raises(ObjectNotFound):
            await read_all(storage.driver, "blobs/nothing/data")
        with pytest.raises(ObjectNotFound):
            await storage.driver.move("uploads/nothing/data", "blobs/nothing/data")
        with pytest.raises(ObjectNotFound):
            await storage.driver.truncate("uploads/nothing/data", 0)
        await storage.driver.delete("blobs/nothing/data")  # no error
        assert await listed(storage.driver, "blobs/") == {}

    run(scenario())


def test_a_failed_append_leaves_the_object_as_before(storage: Storage) -> None:
    async def scenario() -> None:
        key = "uploads/fail/data"
        first = data(100 * KiB)
        assert await storage.driver.append(key, 0, chunks(first)) == len(first)
        # The body fails midway, after more than a segment's worth of bytes.
        with pytest.raises(ClientGone):
            body = failing(data(200 * KiB, 5), data(200 * KiB, 6))
            await storage.driver.append(key, len(first), body)
        assert await storage.driver.size(key) == len(first)
        assert await read_all(storage.driver, key) == first
        # And the upload goes on from there.
        assert await storage.driver.append(key, len(first), chunks(b"tail")) == len(first) + 4
        assert await read_all(storage.driver, key) == first + b"tail"
        # A first append that fails leaves an empty object, as the filesystem does.
        with pytest.raises(ClientGone):
            await storage.driver.append("uploads/fail2/data", 0, failing(data(400 * KiB)))
        assert await storage.driver.size("uploads/fail2/data") == 0

    run(scenario())


def test_an_append_can_be_undone(storage: Storage) -> None:
    """What the blob service does when a chunk's Content-Range was wrong, or its new size could
    not be recorded: a truncation to the old size."""

    async def scenario() -> None:
        key = "uploads/undo/data"
        first, second = data(120 * KiB, 1), data(400 * KiB, 2)
        assert await storage.driver.append(key, 0, chunks(first)) == len(first)
        size = await storage.driver.append(key, len(first), chunks(second))
        assert size == len(first) + len(second)
        await storage.driver.truncate(key, len(first))
        assert await storage.driver.size(key) == len(first)
        assert await read_all(storage.driver, key) == first
        # Cut inside a stored piece too; then appends continue from there.
        await storage.driver.truncate(key, 1000)
        assert await storage.driver.size(key) == 1000
        assert await read_all(storage.driver, key) == first[:1000]
        assert await storage.driver.append(key, 1000, chunks(b"more")) == 1004
        assert await read_all(storage.driver, key) == first[:1000] + b"more"
        # An append at an earlier offset replaces what was past it.
        assert await storage.driver.append(key, 0, chunks(b"new")) == 3
        assert await read_all(storage.driver, key) == b"new"

    run(scenario())


def test_move_of_a_chunked_upload(storage: Storage) -> None:
    pieces = [data(50 * KiB, 1), data(400 * KiB, 2), data(10 * KiB, 3), data(600 * KiB, 4), b"x"]
    whole = b"".join(pieces)

    async def scenario() -> None:
        source, destination = "uploads/mv/data", "blobs/sha256/ab/abcd/data"
        offset = 0
        for piece in pieces:
            offset = await storage.driver.append(source, offset, chunks(piece))
        await storage.driver.move(source, destination)
        assert await storage.driver.size(source) is None
        assert await storage.driver.size(destination) == len(whole)
        assert await read_all(storage.driver, destination) == whole
        assert (
            await read_all(storage.driver, destination, 50 * KiB - 2, 50 * KiB + 2)
            == (whole[50 * KiB - 2 : 50 * KiB + 3])
        )
        # One object at the destination, nothing left of the upload.
        assert storage.stored() == {destination}

    run(scenario())


def test_a_blob_read_while_the_janitor_moves_it_reads_whole(storage: Storage) -> None:
    """A chunked upload's blob is read from the upload's key; the janitor moves it to the
    blob's own key after the first bytes went out (on OSS the segment the read reaches next is
    deleted by then): the read goes on from the blob's key, and every byte arrives."""
    pieces = [data(50 * KiB, 5), data(120 * KiB, 6)]
    whole = b"".join(pieces)
    digest = "sha256:" + hashlib.sha256(whole).hexdigest()

    async def scenario() -> None:
        source, destination = "uploads/read-moved/data", keys.blob_key(parse_digest(digest))
        offset = 0
        for piece in pieces:
            offset = await storage.driver.append(source, offset, chunks(piece))
        body = await open_blob(storage.driver, source, digest, 0, len(whole) - 1)
        first = await anext(body)
        await storage.driver.move(source, destination)
        assert first + b"".join([chunk async for chunk in body]) == whole

    run(scenario())


def test_move_replaces_the_destination(storage: Storage) -> None:
    async def scenario() -> None:
        await storage.driver.append("blobs/x/data", 0, chunks(b"old bytes, longer"))
        await storage.driver.append("uploads/y/data", 0, chunks(b"new bytes"))
        await storage.driver.move("uploads/y/data", "blobs/x/data")
        assert await read_all(storage.driver, "blobs/x/data") == b"new bytes"
        assert await storage.driver.size("uploads/y/data") is None
        # A single object over the single-copy limit moves too (multipart copy).
        big = data(COPY_LIMIT + 20 * KiB)
        await storage.driver.append("uploads/big/data", 0, chunks(big))
        await storage.driver.move("uploads/big/data", "blobs/big/data")
        assert await read_all(storage.driver, "blobs/big/data") == big

    run(scenario())


def test_delete(storage: Storage) -> None:
    async def scenario() -> None:
        await storage.driver.append("blobs/a/data", 0, chunks(b"a"))
        offset = await storage.driver.append("uploads/u/data", 0, chunks(data(10 * KiB)))
        await storage.driver.append("uploads/u/data", offset, chunks(b"more"))
        await storage.driver.append("uploads/v/data", 0, chunks(b"v"))
        await storage.driver.delete("blobs/a/data")
        assert await storage.driver.size("blobs/a/data") is None
        await storage.driver.delete("blobs/a/data")  # again: no error
        # A folder key: everything under it goes (uploads' folders).
        await storage.driver.delete("uploads/u/")
        assert await storage.driver.size("uploads/u/data") is None
        assert await listed(storage.driver, "uploads/") == {"uploads/v/data": 1}
        await storage.driver.delete("uploads/v")
        assert storage.stored() == set()

    run(scenario())


def test_list(storage: Storage) -> None:
    async def scenario() -> None:
        expected = {}
        for i in range(12):  # more than a page of the test driver's listings
            key = f"blobs/sha256/{i:02x}/{i:02x}{'0' * 62}/data"
            await storage.driver.append(key, 0, chunks(b"b" * i))
            expected[key] = i
        offset = await storage.driver.append("uploads/one/data", 0, chunks(b"12345"))
        await storage.driver.append("uploads/one/data", offset, chunks(b"678"))
        await storage.driver.append("uploads/one/data2", 0, chunks(b"z"))
        assert await listed(storage.driver, "blobs/") == expected
        assert await listed(storage.driver, "uploads/") == {
            "uploads/one/data": 8,
            "uploads/one/data2": 1,
        }
        assert len(await listed(storage.driver, "")) == 14
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        async for info in storage.driver.list("uploads/"):
            assert abs((info.modified - now).total_seconds()) < 120
        assert await listed(storage.driver, "nothing/") == {}

    run(scenario())


def test_a_listing_is_in_key_order_and_goes_on_after_a_key(storage: Storage) -> None:
    """A walk stopped at a key goes on from it: keys in string order ('-' sorts before '/':
    ``a-b/…`` before ``a/…``), from after any key, stored or not, also one whose object is
    in segments."""

    async def scenario() -> None:
        for i in range(9):  # more than a page of the test driver's listings
            await storage.driver.append(f"blobs/sha256/{i:02x}/data", 0, chunks(b"b"))
        for key in ("uploads/a/data", "uploads/a-b/data", "uploads/ab/data"):
            await storage.driver.append(key, 0, chunks(b"x"))
        offset = await storage.driver.append("uploads/one/data", 0, chunks(b"12345"))
        await storage.driver.append("uploads/one/data", offset, chunks(b"678"))  # segments
        await storage.driver.append("uploads/one/data2", 0, chunks(b"z"))
        everything = [info.key async for info in storage.driver.list("")]
        assert everything == sorted(everything) and len(everything) == 14
        assert everything.index("uploads/a-b/data") < everything.index("uploads/a/data")
        for at, key in enumerate(everything):
            rest = [info.key async for info in storage.driver.list("", key)]
            assert rest == everything[at + 1 :], key
        uploads = [info.key async for info in storage.driver.list("uploads/", "uploads/b")]
        assert uploads == ["uploads/one/data", "uploads/one/data2"]
        blobs = [info.key async for info in storage.driver.list("blobs/", "blobs/sha256/03/")]
        assert blobs == [f"blobs/sha256/{i:02x}/data" for i in range(3, 9)]

    run(scenario())


def test_only_the_filesystem_is_local(storage: Storage) -> None:
    assert storage.driver.local == (storage.kind == "filesystem")


def test_the_filesystem_driver_reads_bytes_the_page_cache_lacks(tmp_path: Path) -> None:
    """Bytes in the page cache are read on the event loop; bytes that must come from the disk
    are read in a worker thread. Both give the stored bytes."""
    driver = FilesystemDriver(str(tmp_path))
    data = os.urandom(3 * 1024 * KiB + 123)
    assert run(driver.append("blob", 0, chunks(data))) == len(data)
    fd = os.open(driver.path("blob"), os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages, which the kernel may drop
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if not filesystem.page_cache_visible() or filesystem.in_page_cache(fd, 0, len(data) - 1):
            pytest.skip("this filesystem cannot say what the page cache holds, or keeps it")
        assert run(read_all(driver, "blob", 1000, len(data) - 1000)) == data[1000:-999]
        assert run(read_all(driver, "blob")) == data
        assert filesystem.in_page_cache(fd, 0, len(data) - 1)  # read once, now cached
        assert run(read_all(driver, "blob", 5, 2 * 1024 * KiB)) == data[5 : 2 * 1024 * KiB + 1]
    finally:
        os.close(fd)


# --- the OSS driver against the test server ------------------------------------------------


@pytest.fixture
def oss(oss_server: OssTestServer) -> Iterator[tuple[OssTestServer, OssDriver]]:
    oss_server.clear_faults()
    yield oss_server, make_driver(oss_server, f"test-{uuid.uuid4().hex[:12]}")
    oss_server.clear_faults()


def physical(server: OssTestServer, driver: OssDriver) -> set[str]:
    return {k.removeprefix(driver.prefix) for k in server.object_keys("registry", driver.prefix)}


def test_chunks_are_stored_as_segments_and_a_blob_is_one_object(
    oss: tuple[OssTestServer, OssDriver],
) -> None:
    server, driver = oss

    async def scenario() -> None:
        offset = await driver.append("uploads/s/data", 0, chunks(b"a" * 10))
        offset = await driver.append("uploads/s/data", offset, chunks(data(650 * KiB)))
        assert physical(server, driver) == {
            "uploads/s/data",
            segment_key("uploads/s/data", 10),
            segment_key("uploads/s/data", 10 + 300 * KiB),  # the segment size rolled over
            segment_key("uploads/s/data", 10 + 600 * KiB),
        }
        assert {logical_key(k) for k in physical(server, driver)} == {"uploads/s/data"}
        await driver.move("uploads/s/data", "blobs/b/data")
        assert physical(server, driver) == {"blobs/b/data"}
        # Reading a stored-whole object is one ranged GET, no listing.
        server.requests.clear()
        assert await read_all(driver, "blobs/b/data", 5, 20) == b"a" * 5 + data(650 * KiB)[:11]
        assert server.operations() == ["GetObject"]

    run(scenario())


def test_the_server_checks_signatures(oss_server: OssTestServer) -> None:
    bucket = oss2.Bucket(
        oss2.Auth(DEFAULT_KEY_ID, "not the secret"), oss_server.endpoint, "registry"
    )
    driver = OssDriver(bucket, "test-signatures", retries=0)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        run(driver.size("anything"))
    unknown = oss2.Bucket(oss2.Auth("nobody", DEFAULT_KEY_SECRET), oss_server.endpoint, "registry")
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        run(OssDriver(unknown, "x", retries=0).size("anything"))
    answer = httpx.get(f"{oss_server.endpoint}/registry/x")
    assert answer.status_code == 403
    assert "<Code>AccessDenied</Code>" in answer.text


def test_open_storage_reads_the_url_and_credentials(
    oss_server: OssTestServer, tmp_path: Path
) -> None:
    url = f"oss://registry/test-open?endpoint={oss_server.endpoint}&retries=1&read_timeout=5"
    settings = Settings(oss_access_key_id=DEFAULT_KEY_ID, oss_access_key_secret=DEFAULT_KEY_SECRET)
    driver = open_storage(url, settings)
    assert isinstance(driver, OssDriver) and driver.retries == 1 and driver.prefix == "test-open/"
    assert run(driver.append("k", 0, chunks(b"abc"))) == 3
    secret = tmp_path / "oss.json"
    secret.write_text(f'{{"AccessKeyId": "{DEFAULT_KEY_ID}", "AccessKeySecret": "wrong"}}')
    no_keys = {"oss_access_key_id": "", "oss_access_key_secret": ""}
    from_file = open_storage(url, Settings(**no_keys, oss_credentials_file=str(secret)))
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        run(from_file.size("k"))
    # A rotated secret is read again.
    secret.write_text(
        f'{{"access_key_id": "{DEFAULT_KEY_ID}", "access_key_secret": "{DEFAULT_KEY_SECRET}"}}'
    )
    assert run(from_file.size("k")) == 3
    with pytest.raises(ValueError, match="credentials"):
        open_storage(url, Settings(**no_keys, oss_credentials_file=""))
    with pytest.raises(ValueError, match="endpoint"):
        open_storage("oss://registry/x", settings)


def test_redirect_urls(oss: tuple[OssTestServer, OssDriver]) -> None:
    _, driver = oss

    async def scenario() -> None:
        await driver.append("blobs/r/data", 0, chunks(b"redirected bytes"))
        assert await driver.redirect_url("blobs/r/data", 60) is None  # off by default
        driver.redirect = True
        url = await driver.redirect_url("blobs/r/data", 60)
        assert url is not None
        async with httpx.AsyncClient() as client:
            answer = await client.get(url)
            assert answer.status_code == 200 and answer.content == b"redirected bytes"
            other = url.replace("blobs%2Fr", "blobs%2Fs").replace("blobs/r", "blobs/s")
            tampered = await client.get(other)
            assert tampered.status_code == 403 and "SignatureDoesNotMatch" in tampered.text
        expired = await driver.redirect_url("blobs/r/data", -10)
        assert expired is not None
        assert httpx.get(expired).status_code == 403
        # An object still in pieces is served by the registry, not redirected.
        offset = await driver.append("uploads/r/data", 0, chunks(b"a"))
        await driver.append("uploads/r/data", offset, chunks(b"b"))
        assert await driver.redirect_url("uploads/r/data", 60) is None

    run(scenario())


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "drop", "drop_after"])
def test_oss_failing_mid_chunked_upload(oss: tuple[OssTestServer, OssDriver], mode: str) -> None:
    """The PutObject of a chunk fails: answered 500, cut while its body streams, or done but
    its answer lost. The append raises StorageError, the object is as before, and sending the
    chunk again works."""
    server, driver = oss
    key = "uploads/fault/data"
    first, chunk = data(100 * KiB, 1), data(200 * KiB, 2)

    async def scenario() -> None:
        await driver.append(key, 0, chunks(first))
        fault = server.fail_next("PutObject", mode=mode, after_bytes=50 * KiB)
        with pytest.raises(StorageError):
            await driver.append(key, len(first), chunks(chunk[: 64 * KiB], chunk[64 * KiB :]))
        assert fault.hits == 1
        assert await driver.size(key) == len(first)
        assert physical(server, driver) == {key}
        assert await driver.append(key, len(first), chunks(chunk)) == len(first) + len(chunk)
        assert await read_all(driver, key) == first + chunk

    run(scenario())


def test_a_failure_in_a_later_segment_undoes_the_whole_append(
    oss: tuple[OssTestServer, OssDriver],
) -> None:
    server, driver = oss
    key = "uploads/rollover/data"

    async def scenario() -> None:
        await driver.append(key, 0, chunks(b"start"))
        # The second segment of this append (past 300 KiB) fails.
        server.fail_next("PutObject", mode="drop", key=segment_key(key, 5 + 300 * KiB))
        with pytest.raises(StorageError):
            await driver.append(key, 5, chunks(data(500 * KiB)))
        assert await driver.size(key) == 5
        assert physical(server, driver) == {key}

    run(scenario())


def test_leftovers_of_a_failed_undo_are_cut_by_the_next_append(
    oss: tuple[OssTestServer, OssDriver],
) -> None:
    """The chunk is stored but its answer lost, and the undo's deletes fail too: bytes are left
    past the recorded size. The next append at that size removes them first."""
    server, driver = oss
    key = "uploads/leftover/data"

    async def scenario() -> None:
        await driver.append(key, 0, chunks(b"0123456789"))
        server.fail_next("PutObject", mode="drop_after")
        server.fail_next("DeleteObject", count=10)
        with pytest.raises(StorageError):
            await driver.append(key, 10, chunks(b"stale bytes"))
        server.clear_faults()
        assert segment_key(key, 10) in physical(server, driver)
        assert await driver.append(key, 10, chunks(b"abc")) == 13
        assert await read_all(driver, key) == b"0123456789abc"

    run(scenario())


@pytest.mark.parametrize(
    ("operation", "size"),
    [
        ("CopyObject", 1000),  # a single piece up to the copy limit
        ("UploadPartCopy", 3 * COPY_LIMIT),
        ("InitiateMultipartUpload", 3 * COPY_LIMIT),
        ("CompleteMultipartUpload", 3 * COPY_LIMIT),
        ("DeleteObject", 1000),  # the source's delete, after the copy
    ],
)
def test_oss_failing_mid_move(
    oss: tuple[OssTestServer, OssDriver], operation: str, size: int
) -> None:
    server, driver = oss
    content = data(size, 3)
    source, destination = "uploads/mv/data", "blobs/mv/data"

    async def scenario() -> None:
        await driver.append(source, 0, chunks(content))
        # Failing once: retried inside the driver.
        transient = server.fail_next(operation)
        await driver.move(source, destination)
        assert transient.hits == 1
        assert await read_all(driver, destination) == content
        assert await driver.size(source) is None
        await driver.delete(destination)
        # Failing for good: StorageError, the source intact, no multipart upload left behind.
        await driver.append(source, 0, chunks(content))
        server.fail_next(operation, count=100)
        with pytest.raises(StorageError):
            await driver.move(source, destination)
        server.clear_faults()
        assert await read_all(driver, source) == content
        assert server.multipart_uploads() == []
        # The janitor tries again later: it works.
        await driver.move(source, destination)
        assert await read_all(driver, destination) == content
        assert physical(server, driver) == {destination}

    run(scenario())


def test_a_move_whose_completion_answer_is_lost_succeeds(
    oss: tuple[OssTestServer, OssDriver],
) -> None:
    server, driver = oss
    content = data(3 * COPY_LIMIT, 4)

    async def scenario() -> None:
        await driver.append("uploads/lost/data", 0, chunks(content))
        server.fail_next("CompleteMultipartUpload", mode="drop_after")
        await driver.move("uploads/lost/data", "blobs/lost/data")
        assert await read_all(driver, "blobs/lost/data") == content

    run(scenario())


@pytest.mark.parametrize("operation", ["DeleteObject", "DeleteMultipleObjects", "ListObjectsV2"])
def test_oss_failing_mid_delete(oss: tuple[OssTestServer, OssDriver], operation: str) -> None:
    server, driver = oss
    key = "uploads/del/data"

    async def scenario() -> None:
        offset = await driver.append(key, 0, chunks(b"one"))
        offset = await driver.append(key, offset, chunks(b"two"))
        await driver.append(key, offset, chunks(b"three"))
        server.fail_next(operation, count=100)
        with pytest.raises(StorageError):
            await driver.delete(key)
        server.clear_faults()
        await driver.delete(key)
        assert await driver.size(key) is None
        assert physical(server, driver) == set()

    run(scenario())


def test_a_download_cut_midway_resumes(oss: tuple[OssTestServer, OssDriver]) -> None:
    server, driver = oss
    content = data(3 * 1024 * KiB, 5)

    async def scenario() -> None:
        await driver.append("blobs/dl/data", 0, chunks(content))
        cut = server.fail_next("GetObject", count=2, mode="drop_body", after_bytes=700 * KiB)
        assert await read_all(driver, "blobs/dl/data") == content
        assert cut.hits == 2
        cut = server.fail_next("GetObject", mode="drop_body", after_bytes=1000)
        assert await read_all(driver, "blobs/dl/data", 10, 200 * KiB) == content[10 : 200 * KiB + 1]
        assert cut.hits == 1
        # Cut more often than the driver retries: StorageError.
        server.fail_next("GetObject", count=100, mode="drop_body", after_bytes=1000)
        with pytest.raises(StorageError):
            await read_all(driver, "blobs/dl/data")

    run(scenario())


def test_a_download_resumes_only_from_the_same_object(oss: tuple[OssTestServer, OssDriver]) -> None:
    server, small = oss
    driver = make_driver(server, small.prefix, segment_size=8 * 1024 * KiB)  # one object
    old, new = data(2 * 1024 * KiB, 1), data(2 * 1024 * KiB, 2)

    async def scenario() -> None:
        await driver.append("blobs/same/data", 0, chunks(old))
        server.fail_next("GetObject", mode="drop_body", after_bytes=1024 * KiB + 100)
        stream = driver.read("blobs/same/data")
        first = await anext(stream)
        assert first == old[: len(first)]
        # Replaced while being read: the resumed GET must not mix the two.
        await driver.append("blobs/same/data", 0, chunks(new))
        with pytest.raises(StorageError, match="PreconditionFailed"):
            async for _ in stream:
                pass

    run(scenario())


def test_slow_answers_time_out_and_are_retried(oss_server: OssTestServer) -> None:
    oss_server.clear_faults()
    url = (
        f"oss://registry/test-slow-{uuid.uuid4().hex[:8]}"
        f"?endpoint={oss_server.endpoint}&read_timeout=0.5&retries=2"
    )
    settings = Settings(oss_access_key_id=DEFAULT_KEY_ID, oss_access_key_secret=DEFAULT_KEY_SECRET)
    driver = open_storage(url, settings)

    async def scenario() -> None:
        await driver.append("blobs/slow/data", 0, chunks(b"slow"))
        slow = oss_server.fail_next("ListObjectsV2", mode="slow", delay=1.5)
        assert await driver.size("blobs/slow/data") == 4
        assert slow.hits == 1
        oss_server.fail_next("GetObject", count=10, mode="slow", delay=1.5)
        with pytest.raises(StorageError, match=r"timed out|Timeout"):
            await read_all(driver, "blobs/slow/data")

    try:
        run(scenario())
    finally:
        oss_server.clear_faults()


def test_errors_map_to_storage_errors(oss: tuple[OssTestServer, OssDriver]) -> None:
    server, driver = oss

    async def scenario() -> None:
        with pytest.raises(ObjectNotFound):
            await read_all(driver, "blobs/none/data")
        server.fail_next("ListObjectsV2", count=100, status=503, code="ServiceUnavailable")
        with pytest.raises(StorageError, match="503 ServiceUnavailable"):
            await driver.size("blobs/none/data")
        server.clear_faults()
        with pytest.raises(StorageError, match="cannot append"):
            await driver.append("uploads/none/data", 10, chunks(b"x"))

    run(scenario())
