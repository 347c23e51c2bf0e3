"""A protocol-level Aliyun OSS server for tests: real HTTP on 127.0.0.1, the REST operations the
OSS storage driver uses, with OSS's XML bodies, headers and error codes, and request signatures
checked (the V1 scheme ``Authorization: OSS <id>:<signature>``, HMAC-SHA1, that ``oss2`` uses by
default, and V1 signed URLs).

Objects are plain files under ``<root>/buckets/<bucket>/<key>``, so a test can look at (or
plant) objects the way it looks at the filesystem driver's folder: the file's mtime is the
object's ``Last-Modified``. What OSS keeps beside the bytes (ETag, CRC-64, object type, content
type, user metadata) is in a sidecar file under ``<root>/meta/``; a file written by a test
directly has none, and gets computed values. Uploads are streamed to ``<root>/tmp/`` and moved
into place only once the whole body arrived, so a request cut short stores nothing, as on OSS;
multipart uploads keep their parts under ``<root>/multipart/<upload id>/``.

Operations: PutObject, GetObject (``Range``, ``x-oss-range-behavior: standard``, ``If-Match``),
HeadObject, DeleteObject, DeleteMultipleObjects, ListObjectsV2 (``list-type=2``, with
``continuation-token``, ``start-after``, ``max-keys``, ``delimiter``, ``encoding-type=url``),
CopyObject (refused above ``copy_limit``, 1 GB by default, as OSS documents), and
InitiateMultipartUpload, UploadPart, UploadPartCopy (``x-oss-copy-source-range``),
CompleteMultipartUpload (parts checked: ETags, order, 100 KB minimum but for the last) and
AbortMultipartUpload.

Faults: :meth:`OssTestServer.fail_next` makes the next N requests of an operation (optionally
only for keys containing a string) answer 500 (or any status and code), wait first, drop the
connection before answering (reading part of the request body first), drop it after doing the
work (the answer is lost), or drop it in the middle of a GET's body.

Limits of this stand-in: one keyspace per bucket folder, so keys that are not valid relative
paths (``a//b``, ``a/``, ``../x``), or a key that is also another key's folder, are refused
with ``InvalidObjectName``; no versioning, ACLs, V4 signatures or virtual-hosted-style hosts.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import crcmod

DEFAULT_KEY_ID = "test-access-key-id"
DEFAULT_KEY_SECRET = "test-access-key-secret"
MAX_KEYS = 1000
MAX_SKEW = dt.timedelta(minutes=15)
BLOCK = 256 * 1024

# The query parameters that are part of the signed resource (V1), as in the OSS docs.
SUBRESOURCES = frozenset(
    {
        "acl", "uploadId", "uploads", "partNumber", "group", "link", "delete", "website",
        "location", "objectInfo", "objectMeta", "response-expires", "response-content-type",
        "response-content-language", "response-cache-control", "response-content-encoding",
        "response-content-disposition", "logging", "cors", "lifecycle", "restore", "qos",
        "referer", "stat", "bucketInfo", "append", "position", "security-token", "live", "comp",
        "status", "vod", "startTime", "endTime", "x-oss-process", "symlink", "callback",
        "callback-var", "tagging", "encryption", "versions", "versioning", "versionId", "policy",
        "requestPayment", "x-oss-traffic-limit", "qosInfo", "asyncFetch", "x-oss-request-payer",
        "sequential", "inventory", "inventoryId", "continuation-token", "worm", "wormId",
        "wormExtend", "replication", "replicationLocation", "replicationProgress",
        "transferAcceleration", "cname", "metaQuery",
    }
)  # fmt: skip

OPERATIONS = (
    "PutObject",
    "GetObject",
    "HeadObject",
    "DeleteObject",
    "DeleteMultipleObjects",
    "ListObjectsV2",
    "CopyObject",
    "InitiateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
)
FAULT_MODES = ("error", "slow", "drop", "drop_after", "drop_body")


def crc64() -> Any:
    """CRC-64/ECMA-182 as OSS computes it (``x-oss-hash-crc64ecma``)."""
    return crcmod.Crc(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


class OssFailure(Exception):
    """An OSS error answer: status, code and message, rendered as OSS's XML ``<Error>``."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class BodyCut(Exception):
    """The client's request body ended before it was complete (or the connection broke)."""


class Dropped(Exception):
    """A fault: close the connection without answering."""


@dataclass
class Fault:
    operation: str
    count: int
    mode: str
    status: int = 500
    code: str = "InternalError"
    delay: float = 0.0
    after_bytes: int | None = None
    key: str | None = None
    hits: int = 0


@dataclass
class ObjectMeta:
    etag: str
    crc: int
    object_type: str = "Normal"
    content_type: str = "application/octet-stream"
    user_meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """What one request recorded (``OssTestServer.requests``)."""

    operation: str
    key: str
    status: int = 0


class OssTestServer:
    def __init__(
        self,
        root: Path,
        *,
        buckets: tuple[str, ...] = ("registry",),
        access_key_id: str = DEFAULT_KEY_ID,
        access_key_secret: str = DEFAULT_KEY_SECRET,
        copy_limit: int = 1 << 30,
        min_part_size: int = 100 * 1024,
        max_part_size: int = 5 << 30,
    ) -> None:
        self.root = Path(root)
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.copy_limit = copy_limit
        self.min_part_size = min_part_size
        self.max_part_size = max_part_size
        for sub in ("buckets", "meta", "tmp", "multipart"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for bucket in buckets:
            self.create_bucket(bucket)
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------------

    def start(self) -> OssTestServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="oss-test-server")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> OssTestServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what tests use --------------------------------------------------------------------

    def create_bucket(self, name: str) -> Path:
        path = self.root / "buckets" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bucket_path(self, bucket: str) -> Path:
        return self.root / "buckets" / bucket

    def object_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return [key for key, _ in self._walk(bucket, prefix)]

    def multipart_uploads(self) -> list[str]:
        """Upload ids of the multipart uploads neither completed nor aborted."""
        return sorted(p.name for p in (self.root / "multipart").iterdir())

    def fail_next(
        self,
        operation: str,
        count: int = 1,
        *,
        mode: str = "error",
        status: int = 500,
        code: str = "InternalError",
        delay: float = 0.0,
        after_bytes: int | None = None,
        key: str | None = None,
    ) -> Fault:
        """Make the next ``count`` requests of ``operation`` (one of ``OPERATIONS``) whose key
        contains ``key`` (if given) fail. Modes:

        - ``error``: answer ``status``/``code`` (500 ``InternalError`` by default), doing
          nothing;
        - ``slow``: wait ``delay`` seconds, then answer normally;
        - ``drop``: read ``after_bytes`` of the request body (half of it, or a first chunk, by
          default), then close the connection without an answer; nothing is stored;
        - ``drop_after``: do the work, then close the connection without an answer;
        - ``drop_body``: (GetObject) send the headers and ``after_bytes`` of the body (half by
          default), then close the connection.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        fault = Fault(operation, count, mode, status, code, delay, after_bytes, key)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def operations(self) -> list[str]:
        with self._lock:
            return [r.operation for r in self.requests]

    def _take_fault(self, operation: str, key: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation == operation and fault.count > 0:
                    if fault.key is not None and fault.key not in key:
                        continue
                    fault.count -= 1
                    fault.hits += 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- storage ---------------------------------------------------------------------------

    def object_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if (
            not key
            or len(key.encode()) > 1023
            or key.startswith("\\")
            or any(part in ("", ".", "..") for part in parts)
            or "\x00" in key
        ):
            raise OssFailure(400, "InvalidObjectName", f"the test server cannot store {key!r}")
        return self.bucket_path(bucket).joinpath(*parts)

    def _meta_path(self, bucket: str, key: str) -> Path:
        name = hashlib.sha1(f"{bucket}/{key}".encode()).hexdigest()
        return self.root / "meta" / name[:2] / f"{name}.json"

    def _stat_matches(self, stat: os.stat_result, recorded: dict[str, Any]) -> bool:
        return bool(
            recorded.get("size") == stat.st_size
            and recorded.get("mtime_ns") == stat.st_mtime_ns
            and recorded.get("ino") == stat.st_ino
        )

    def read_meta(self, bucket: str, key: str, path: Path, stat: os.stat_result) -> ObjectMeta:
        try:
            recorded = json.loads(self._meta_path(bucket, key).read_text())
        except (FileNotFoundError, ValueError):
            recorded = {}
        if recorded and self._stat_matches(stat, recorded):
            return ObjectMeta(
                recorded["etag"],
                recorded["crc"],
                recorded["type"],
                recorded["content_type"],
                recorded["user_meta"],
            )
        # Planted by a test (or touched since): compute what OSS would have recorded.
        md5, crc = hashlib.md5(), crc64()
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                md5.update(block)
                crc.update(block)
        return ObjectMeta(md5.hexdigest().upper(), crc.crcValue)

    def commit(self, bucket: str, key: str, tmp: Path, meta: ObjectMeta) -> os.stat_result:
        """Put ``tmp`` in place as object ``key`` (atomically replacing any old one)."""
        path = self.object_path(bucket, key)
        with self._lock:
            for parent in reversed(path.relative_to(self.bucket_path(bucket)).parents):
                folder = self.bucket_path(bucket) / parent
                if folder.exists() and not folder.is_dir():
                    raise OssFailure(
                        400, "InvalidObjectName", f"the test server keeps {parent} as an object"
                    )
            if path.is_dir():
                raise OssFailure(400, "InvalidObjectName", f"the test server keeps {key} a folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
            stat = path.stat()
            meta_path = self._meta_path(bucket, key)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(
                json.dumps(
                    {
                        "etag": meta.etag,
                        "crc": meta.crc,
                        "type": meta.object_type,
                        "content_type": meta.content_type,
                        "user_meta": meta.user_meta,
                        "size": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns,
                        "ino": stat.st_ino,
                    }
                )
            )
            return stat

    def open_object(self, bucket: str, key: str) -> tuple[int, os.stat_result, ObjectMeta] | None:
        """An open descriptor on the object's bytes as they are now (a later replacement does
        not change what it reads), its stat and metadata; None if there is no such object."""
        path = self.object_path(bucket, key)
        with self._lock:
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            stat = os.fstat(fd)
            if not os.path.isfile(path) or stat.st_mode & 0o170000 != 0o100000:
                os.close(fd)
                return None
        try:
            meta = self.read_meta(bucket, key, path, stat)
        except BaseException:
            os.close(fd)
            raise
        return fd, stat, meta

    def delete_object(self, bucket: str, key: str) -> None:
        try:
            path = self.object_path(bucket, key)
        except OssFailure:
            return
        with self._lock:
            if not path.is_file():
                return
            path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(bucket, key).unlink()
            top = self.bucket_path(bucket)
            folder = path.parent
            while folder != top:  # OSS has no folders: none is left behind empty
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    def _walk(self, bucket: str, prefix: str) -> list[tuple[str, os.stat_result]]:
        """Every (key, stat) in ``bucket`` starting with ``prefix``, in key order."""
        top = self.bucket_path(bucket)
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if any(part in (".", "..") for part in folder_part.split("/")):
            return []
        start = top / folder_part if folder_part else top
        found = []
        for folder, _, files in os.walk(start):
            for name in files:
                path = Path(folder, name)
                key = path.relative_to(top).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append((key, path.stat()))
                except FileNotFoundError:
                    continue
        found.sort(key=lambda item: item[0].encode())
        return found

    def new_tmp(self) -> Path:
        return self.root / "tmp" / uuid.uuid4().hex

    # --- multipart -------------------------------------------------------------------------

    def upload_dir(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9A-F]{32}", upload_id):
            raise OssFailure(404, "NoSuchUpload", "The specified upload does not exist.")
        return self.root / "multipart" / upload_id

    def upload_info(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        folder = self.upload_dir(upload_id)
        try:
            info: dict[str, Any] = json.loads((folder / "upload.json").read_text())
        except FileNotFoundError:
            raise OssFailure(404, "NoSuchUpload", "The specified upload does not exist.") from None
        if info["bucket"] != bucket or info["key"] != key:
            raise OssFailure(404, "NoSuchUpload", "The specified upload does not exist.")
        return info


# --- HTTP -----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # a client that went away (fault tests make many)
        super().handle_error(request, client_address)


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _iso8601(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(int(timestamp), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _xml(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _child(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int, standard: bool) -> tuple[int, int] | None:
    """The (first, last) bytes of a ``Range`` header on an object of ``size`` bytes; None for
    the whole object. Without ``x-oss-range-behavior: standard`` OSS ignores a range it cannot
    serve (200, whole object); with it, an end past the object is cut and a start past it is
    416 ``InvalidRange``."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # a suffix: the last N bytes
        count = int(last_text)
        if count == 0:
            return None
        if count > size:
            return (0, size - 1) if standard and size else None
        return size - count, size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    if first >= size:
        if standard:
            raise OssFailure(416, "InvalidRange", "The requested range cannot be satisfied")
        return None
    if last >= size:
        if not standard:
            return None
        last = size - 1
    return first, last


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (~40 ms a request), which no real OSS does.
    disable_nagle_algorithm = True

    # --- plumbing --------------------------------------------------------------------------

    @property
    def owner(self) -> OssTestServer:
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.request_id = uuid.uuid4().hex[:24].upper()
        self.suppress = False
        # A request without a body has nothing left to read: the connection can be kept.
        self.body_done = not (
            int(self.headers.get("Content-Length") or 0)
            or "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        )
        self.body_limit: int | None = None
        self.fault: Fault | None = None
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        _, _, rest = path.partition("/")
        self.bucket, _, self.key = rest.partition("/")
        self.operation = self._operation()
        record = Request(self.operation, self.key)
        with self.owner._lock:
            self.owner.requests.append(record)
        try:
            self._check_signature()
            if not self.bucket or not self.owner.bucket_path(self.bucket).is_dir():
                raise OssFailure(404, "NoSuchBucket", "The specified bucket does not exist.")
            self.fault = self.owner._take_fault(self.operation, self.key)
            if self.fault is not None:
                self._start_fault(self.fault)
            handler = getattr(self, f"_op_{self.operation}", None)
            if handler is None:
                raise OssFailure(
                    400, "NotImplemented", f"the test server does not implement {self.operation}"
                )
            status = handler()
            record.status = status
        except OssFailure as failure:
            record.status = failure.status
            self._error(failure)
        except (BodyCut, Dropped, ConnectionError, TimeoutError):
            record.status = -1
            self.close_connection = True
        except Exception as exc:  # a bug here: tell the client, as OSS would say 500
            record.status = 500
            self._error(OssFailure(500, "InternalError", f"{type(exc).__name__}: {exc}"))
        finally:
            if not self.body_done:
                self.close_connection = True

    def _operation(self) -> str:
        method, q, key = self.command, self.query, self.key
        copy = "x-oss-copy-source" in self.headers
        if not key:
            if method == "POST" and "delete" in q:
                return "DeleteMultipleObjects"
            if method == "GET" and q.get("list-type") == "2":
                return "ListObjectsV2"
            if method == "GET" and "uploads" not in q:
                return "ListObjects"
            return f"Bucket{method.title()}"
        if method == "PUT":
            if "uploadId" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            return "CopyObject" if copy else "PutObject"
        if method == "POST":
            if "uploads" in q:
                return "InitiateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            if "append" in q:
                return "AppendObject"
            return "PostObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if method == "HEAD":
            return "HeadObject"
        return "GetObject"

    def _start_fault(self, fault: Fault) -> None:
        if fault.mode == "slow":
            time.sleep(fault.delay)
        elif fault.mode == "error":
            self._drain()
            raise OssFailure(fault.status, fault.code, "injected fault")
        elif fault.mode == "drop":
            length = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if fault.after_bytes is not None:
                wanted = fault.after_bytes
            elif length is not None:
                wanted = int(length) // 2
            else:
                wanted = 1 if chunked else 0
            if wanted and (length is not None or chunked):
                self.body_limit = wanted
                for _ in self._body():
                    pass
            raise Dropped
        elif fault.mode == "drop_after":
            self.suppress = True

    # --- signatures ------------------------------------------------------------------------

    def _check_signature(self) -> None:
        owner = self.owner
        header = self.headers.get("Authorization")
        if header is None and "Signature" in self.query:
            key_id = self.query.get("OSSAccessKeyId", "")
            provided = self.query["Signature"]
            date = self.query.get("Expires", "")
            if not date.isdigit():
                raise OssFailure(403, "AccessDenied", "Expires is not a number.")
            if int(date) < time.time():
                raise OssFailure(403, "AccessDenied", "Request has expired.")
        elif header is not None:
            if not header.startswith("OSS "):
                raise OssFailure(
                    400, "InvalidArgument", "the test server checks V1 signatures (OSS id:sig)"
                )
            key_id, _, provided = header[4:].partition(":")
            date = self.headers.get("x-oss-date") or self.headers.get("Date") or ""
            when = email.utils.parsedate_to_datetime(date) if date else None
            if when is None:
                raise OssFailure(403, "AccessDenied", "The request has no Date header.")
            if abs(when - dt.datetime.now(dt.UTC)) > MAX_SKEW:
                raise OssFailure(
                    403,
                    "RequestTimeTooSkewed",
                    "The difference between the request time and the current time is too large.",
                )
        else:
            raise OssFailure(403, "AccessDenied", "You have no right to access this object.")
        if key_id != owner.access_key_id:
            raise OssFailure(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=key_id,
            )
        string_to_sign = self._string_to_sign(date)
        expected = base64.b64encode(
            hmac.new(
                owner.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha1
            ).digest()
        ).decode()
        if not hmac.compare_digest(expected, provided):
            raise OssFailure(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                OSSAccessKeyId=key_id,
                SignatureProvided=provided,
                StringToSign=string_to_sign,
                StringToSignBytes=" ".join(f"{b:02x}" for b in string_to_sign.encode()),
            )

    def _string_to_sign(self, date: str) -> str:
        oss_headers = sorted(
            (name.lower(), value.strip())
            for name, value in self.headers.items()
            if name.lower().startswith("x-oss-")
        )
        canonical_headers = "".join(f"{name}:{value}\n" for name, value in oss_headers)
        subresources = sorted(
            (name, value) for name, value in self.query.items() if name in SUBRESOURCES
        )
        resource = f"/{self.bucket}/{self.key}" if self.bucket else "/"
        if subresources:
            resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources)
        return "\n".join(
            [
                self.command,
                self.headers.get("Content-MD5", ""),
                self.headers.get("Content-Type", ""),
                date,
                canonical_headers + resource,
            ]
        )

    # --- bodies ----------------------------------------------------------------------------

    def _body(self) -> Iterator[bytes]:
        """The request body, block by block (``Content-Length`` or chunked). Raises
        :class:`BodyCut` if the connection ends first. With ``body_limit`` set, stops after
        that many bytes (a fault: the rest is never read)."""
        limit = self.body_limit
        seen = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise BodyCut
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        trailer = self.rfile.readline(8192)
                        if not trailer.endswith(b"\n"):
                            raise BodyCut
                        if trailer in (b"\r\n", b"\n"):
                            break
                    break
                while size > 0:
                    want = min(size, BLOCK)
                    if limit is not None:
                        want = min(want, limit - seen)
                        if want <= 0:
                            return
                    data = self.rfile.read(want)
                    if len(data) < want:
                        raise BodyCut
                    size -= len(data)
                    seen += len(data)
                    yield data
                if self.rfile.read(2) not in (b"\r\n",):
                    raise BodyCut
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                want = min(remaining, BLOCK)
                if limit is not None:
                    want = min(want, limit - seen)
                    if want <= 0:
                        return
                data = self.rfile.read(want)
                if not data:
                    raise BodyCut
                remaining -= len(data)
                seen += len(data)
                yield data
        self.body_done = True

    def _drain(self) -> None:
        for _ in self._body():
            pass

    def _read_all(self, limit: int = 10 * 1024 * 1024) -> bytes:
        data = bytearray()
        for block in self._body():
            data += block
            if len(data) > limit:
                raise OssFailure(400, "EntityTooLarge", "the request body is too large")
        return bytes(data)

    def _receive(self) -> tuple[Path, int, str, int, bytes]:
        """Stream the request body to a temporary file: (path, size, md5 hex, crc64, md5)."""
        tmp = self.owner.new_tmp()
        md5, crc = hashlib.md5(), crc64()
        size = 0
        try:
            with open(tmp, "wb") as f:
                for block in self._body():
                    f.write(block)
                    md5.update(block)
                    crc.update(block)
                    size += len(block)
            expected_md5 = self.headers.get("Content-MD5")
            if expected_md5 is not None and base64.b64decode(expected_md5) != md5.digest():
                raise OssFailure(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, md5.hexdigest().upper(), crc.crcValue, md5.digest()

    # --- answers ---------------------------------------------------------------------------

    def _send_head(self, status: int, headers: dict[str, str], length: int) -> bool:
        """Status and headers; False when a fault says no answer is to be sent."""
        if self.suppress:
            raise Dropped
        self.send_response(status)
        self.send_header("x-oss-request-id", self.request_id)
        self.send_header("Date", _http_date(time.time()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        return True

    def _respond(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> int:
        headers = dict(headers or {})
        if body:
            headers.setdefault("Content-Type", "application/xml")
        self._send_head(status, headers, len(body))
        if body and self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _error(self, failure: OssFailure) -> None:
        root = ET.Element("Error")
        _child(root, "Code", failure.code)
        _child(root, "Message", failure.message)
        _child(root, "RequestId", self.request_id)
        _child(root, "HostId", f"{self.bucket}.127.0.0.1" if self.bucket else "127.0.0.1")
        for name, value in failure.extra.items():
            _child(root, name, value)
        body = _xml(root)
        if not self.body_done and self.command in ("PUT", "POST"):
            self.close_connection = True  # its body was not read
        try:
            if self.command == "HEAD":
                # No body on a HEAD: OSS sends the error in a header.
                self._send_head(failure.status, {"x-oss-err": base64.b64encode(body).decode()}, 0)
            else:
                self._send_head(failure.status, {"Content-Type": "application/xml"}, len(body))
                self.wfile.write(body)
        except (Dropped, ConnectionError):
            self.close_connection = True

    def _object_headers(self, stat: os.stat_result, meta: ObjectMeta) -> dict[str, str]:
        headers = {
            "Content-Type": meta.content_type,
            "ETag": f'"{meta.etag}"',
            "Last-Modified": _http_date(stat.st_mtime),
            "Accept-Ranges": "bytes",
            "x-oss-object-type": meta.object_type,
            "x-oss-storage-class": "Standard",
            "x-oss-hash-crc64ecma": str(meta.crc),
        }
        for name, value in meta.user_meta.items():
            headers[f"x-oss-meta-{name}"] = value
        return headers

    def _user_meta(self) -> dict[str, str]:
        return {
            name.lower()[len("x-oss-meta-") :]: value
            for name, value in self.headers.items()
            if name.lower().startswith("x-oss-meta-")
        }

    def _copy_source(self) -> tuple[str, str]:
        source = unquote(self.headers["x-oss-copy-source"])
        _, _, rest = source.partition("/")
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise OssFailure(400, "InvalidArgument", "x-oss-copy-source is malformed")
        if not self.owner.bucket_path(bucket).is_dir():
            raise OssFailure(404, "NoSuchBucket", "The specified bucket does not exist.")
        return bucket, key

    def _opened(self, bucket: str, key: str) -> tuple[int, os.stat_result, ObjectMeta]:
        opened = self.owner.open_object(bucket, key)
        if opened is None:
            raise OssFailure(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        return opened

    # --- operations ------------------------------------------------------------------------

    def _op_PutObject(self) -> int:
        self.owner.object_path(self.bucket, self.key)
        tmp, _, etag, crc, _ = self._receive()
        meta = ObjectMeta(
            etag,
            crc,
            "Normal",
            self.headers.get("Content-Type") or "application/octet-stream",
            self._user_meta(),
        )
        try:
            self.owner.commit(self.bucket, self.key, tmp, meta)
        finally:
            tmp.unlink(missing_ok=True)
        return self._respond(200, {"ETag": f'"{etag}"', "x-oss-hash-crc64ecma": str(crc)})

    def _op_HeadObject(self) -> int:
        self._drain()
        fd, stat, meta = self._opened(self.bucket, self.key)
        os.close(fd)
        self._check_conditions(meta)
        headers = self._object_headers(stat, meta)
        self._send_head(200, headers, stat.st_size)
        return 200

    def _check_conditions(self, meta: ObjectMeta) -> None:
        wanted = self.headers.get("If-Match")
        if wanted is not None and wanted.strip().strip('"') != meta.etag:
            raise OssFailure(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold.",
            )

    def _op_GetObject(self) -> int:
        self._drain()
        fd, stat, meta = self._opened(self.bucket, self.key)
        try:
            self._check_conditions(meta)
            size = stat.st_size
            headers = self._object_headers(stat, meta)
            standard = self.headers.get("x-oss-range-behavior", "").lower() == "standard"
            wanted = self.headers.get("Range")
            span = _parse_range(wanted, size, standard) if wanted else None
            status = 200
            first, last = 0, size - 1
            if span is not None:
                status = 206
                first, last = span
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            length = max(0, last - first + 1)
            cut = None
            if self.fault is not None and self.fault.mode == "drop_body":
                cut = self.fault.after_bytes if self.fault.after_bytes is not None else length // 2
            self._send_head(status, headers, length)
            os.lseek(fd, first, os.SEEK_SET)
            remaining = length if cut is None else min(cut, length)
            while remaining > 0:
                block = os.read(fd, min(BLOCK, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
            if cut is not None:
                self.wfile.flush()
                raise Dropped
            return status
        finally:
            os.close(fd)

    def _op_DeleteObject(self) -> int:
        self._drain()
        self.owner.delete_object(self.bucket, self.key)
        return self._respond(204)

    def _op_DeleteMultipleObjects(self) -> int:
        body = self._read_all()
        expected_md5 = self.headers.get("Content-MD5")
        if expected_md5 is None:
            raise OssFailure(
                400, "InvalidRequest", "Missing required header for this request: Content-MD5"
            )
        if base64.b64decode(expected_md5) != hashlib.md5(body).digest():
            raise OssFailure(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
        try:
            request = ET.fromstring(body)
        except ET.ParseError:
            raise OssFailure(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from None
        if request.tag != "Delete":
            raise OssFailure(400, "MalformedXML", "The root element must be Delete.")
        quiet = (request.findtext("Quiet") or "false").strip().lower() == "true"
        keys = [node.findtext("Key") or "" for node in request.findall("Object")]
        if not keys or len(keys) > 1000:
            raise OssFailure(400, "MalformedXML", "Delete takes 1 to 1000 objects.")
        encoded = self.query.get("encoding-type") == "url"
        result = ET.Element("DeleteResult")
        if encoded:
            _child(result, "EncodingType", "url")
        for key in keys:
            self.owner.delete_object(self.bucket, key)
            if not quiet:
                deleted = _child(result, "Deleted")
                _child(deleted, "Key", quote(key, safe="") if encoded else key)
        return self._respond(200, body=_xml(result))

    def _op_ListObjectsV2(self) -> int:
        self._drain()
        q = self.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        start_after = q.get("start-after", "")
        token = q.get("continuation-token", "")
        encoded = q.get("encoding-type") == "url"
        try:
            max_keys = int(q.get("max-keys") or 100)
        except ValueError:
            raise OssFailure(400, "InvalidArgument", "max-keys is not a number") from None
        if not 0 < max_keys <= MAX_KEYS:
            raise OssFailure(400, "InvalidArgument", "max-keys must be between 1 and 1000")
        after = start_after
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError:
                raise OssFailure(
                    400, "InvalidArgument", "The continuation token is invalid."
                ) from None
        entries: list[tuple[str, os.stat_result | None]] = []
        seen_prefixes: set[str] = set()
        truncated = False
        for key, stat in self.owner._walk(self.bucket, prefix):
            if after and key.encode() <= after.encode():
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common in seen_prefixes or (after and common.encode() <= after.encode()):
                        continue
                    if len(entries) == max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(common)
                    entries.append((common, None))
                    continue
            if len(entries) == max_keys:
                truncated = True
                break
            entries.append((key, stat))

        def text(value: str) -> str:
            return quote(value, safe="") if encoded else value

        result = ET.Element("ListBucketResult")
        _child(result, "Name", self.bucket)
        _child(result, "Prefix", text(prefix))
        if start_after:
            _child(result, "StartAfter", text(start_after))
        if token:
            _child(result, "ContinuationToken", token)
        _child(result, "MaxKeys", max_keys)
        _child(result, "Delimiter", text(delimiter))
        if encoded:
            _child(result, "EncodingType", "url")
        _child(result, "IsTruncated", "true" if truncated else "false")
        _child(result, "KeyCount", len(entries))
        if truncated:
            last = entries[-1][0]
            _child(
                result, "NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode()
            )
        for key, entry in entries:
            if entry is None:
                common_node = _child(result, "CommonPrefixes")
                _child(common_node, "Prefix", text(key))
                continue
            stat = entry
            path = self.owner.object_path(self.bucket, key)
            try:
                meta = self.owner.read_meta(self.bucket, key, path, stat)
            except FileNotFoundError:
                continue
            contents = _child(result, "Contents")
            _child(contents, "Key", text(key))
            _child(contents, "LastModified", _iso8601(stat.st_mtime))
            _child(contents, "ETag", f'"{meta.etag}"')
            _child(contents, "Type", meta.object_type)
            _child(contents, "Size", stat.st_size)
            _child(contents, "StorageClass", "Standard")
        return self._respond(200, body=_xml(result))

    def _op_CopyObject(self) -> int:
        self._drain()
        source_bucket, source_key = self._copy_source()
        self.owner.object_path(self.bucket, self.key)
        fd, stat, meta = self._opened(source_bucket, source_key)
        try:
            if stat.st_size > self.owner.copy_limit:
                raise OssFailure(
                    400,
                    "EntityTooLarge",
                    f"CopyObject copies objects up to {self.owner.copy_limit} bytes; "
                    "use UploadPartCopy for larger ones.",
                )
            tmp, etag, crc = self._copy_bytes(fd, 0, stat.st_size)
        finally:
            os.close(fd)
        directive = self.headers.get("x-oss-metadata-directive", "COPY").upper()
        if directive == "REPLACE":
            content_type = self.headers.get("Content-Type") or "application/octet-stream"
            user_meta = self._user_meta()
        else:
            content_type, user_meta = meta.content_type, meta.user_meta
        new_meta = ObjectMeta(etag, crc, "Normal", content_type, user_meta)
        try:
            stat = self.owner.commit(self.bucket, self.key, tmp, new_meta)
        finally:
            tmp.unlink(missing_ok=True)
        result = ET.Element("CopyObjectResult")
        _child(result, "ETag", f'"{etag}"')
        _child(result, "LastModified", _iso8601(stat.st_mtime))
        return self._respond(200, {"x-oss-hash-crc64ecma": str(crc)}, _xml(result))

    def _copy_bytes(self, fd: int, first: int, length: int) -> tuple[Path, str, int]:
        tmp = self.owner.new_tmp()
        md5, crc = hashlib.md5(), crc64()
        try:
            with open(tmp, "wb") as out:
                os.lseek(fd, first, os.SEEK_SET)
                remaining = length
                while remaining > 0:
                    block = os.read(fd, min(BLOCK, remaining))
                    if not block:
                        raise OssFailure(500, "InternalError", "the source object shrank")
                    out.write(block)
                    md5.update(block)
                    crc.update(block)
                    remaining -= len(block)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, md5.hexdigest().upper(), crc.crcValue

    def _op_InitiateMultipartUpload(self) -> int:
        self._drain()
        self.owner.object_path(self.bucket, self.key)
        upload_id = uuid.uuid4().hex.upper()
        folder = self.owner.root / "multipart" / upload_id
        folder.mkdir()
        info = {
            "bucket": self.bucket,
            "key": self.key,
            "content_type": self.headers.get("Content-Type") or "application/octet-stream",
            "user_meta": self._user_meta(),
            "initiated": time.time(),
        }
        (folder / "upload.json").write_text(json.dumps(info))
        result = ET.Element("InitiateMultipartUploadResult")
        _child(result, "Bucket", self.bucket)
        _child(result, "Key", self.key)
        _child(result, "UploadId", upload_id)
        return self._respond(200, body=_xml(result))

    def _part_number(self) -> int:
        try:
            number = int(self.query.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise OssFailure(
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive.",
            )
        return number

    def _store_part(
        self, number: int, tmp: Path, size: int, etag: str, crc: int, md5: bytes
    ) -> None:
        folder = self.owner.upload_dir(self.query["uploadId"])
        with self.owner._lock:
            if not folder.is_dir():
                raise OssFailure(404, "NoSuchUpload", "The specified upload does not exist.")
            os.replace(tmp, folder / f"part-{number:05d}")
            (folder / f"part-{number:05d}.json").write_text(
                json.dumps({"size": size, "etag": etag, "crc": crc, "md5": md5.hex()})
            )

    def _op_UploadPart(self) -> int:
        number = self._part_number()
        self.owner.upload_info(self.bucket, self.key, self.query["uploadId"])
        tmp, size, etag, crc, md5 = self._receive()
        try:
            if size > self.owner.max_part_size:
                raise OssFailure(400, "EntityTooLarge", "The part is too large.")
            self._store_part(number, tmp, size, etag, crc, md5)
        finally:
            tmp.unlink(missing_ok=True)
        return self._respond(200, {"ETag": f'"{etag}"', "x-oss-hash-crc64ecma": str(crc)})

    def _op_UploadPartCopy(self) -> int:
        self._drain()
        number = self._part_number()
        self.owner.upload_info(self.bucket, self.key, self.query["uploadId"])
        source_bucket, source_key = self._copy_source()
        fd, stat, _ = self._opened(source_bucket, source_key)
        try:
            first, last = 0, stat.st_size - 1
            wanted = self.headers.get("x-oss-copy-source-range")
            if wanted:
                match = _RANGE.match(wanted.strip())
                if match is None or not match.group(1) or not match.group(2):
                    raise OssFailure(400, "InvalidArgument", "x-oss-copy-source-range is invalid")
                first, last = int(match.group(1)), int(match.group(2))
                if first > last or last >= stat.st_size:
                    raise OssFailure(
                        400, "InvalidArgument", "x-oss-copy-source-range is out of the object"
                    )
            length = last - first + 1
            if length > self.owner.max_part_size:
                raise OssFailure(400, "EntityTooLarge", "The part is too large.")
            tmp, etag, crc = self._copy_bytes(fd, first, length)
        finally:
            os.close(fd)
        try:
            md5 = bytes.fromhex(etag)
            self._store_part(number, tmp, length, etag, crc, md5)
        finally:
            tmp.unlink(missing_ok=True)
        result = ET.Element("CopyPartResult")
        _child(result, "LastModified", _iso8601(time.time()))
        _child(result, "ETag", f'"{etag}"')
        # The part's ETag is also a header (what oss2 reads).
        return self._respond(200, {"ETag": f'"{etag}"'}, _xml(result))

    def _op_CompleteMultipartUpload(self) -> int:
        body = self._read_all()
        upload_id = self.query["uploadId"]
        info = self.owner.upload_info(self.bucket, self.key, upload_id)
        folder = self.owner.upload_dir(upload_id)
        try:
            request = ET.fromstring(body)
        except ET.ParseError:
            raise OssFailure(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from None
        listed = []
        for node in request.findall("Part"):
            try:
                number = int(node.findtext("PartNumber") or "")
                listed.append((number, (node.findtext("ETag") or "").strip().strip('"')))
            except ValueError:
                raise OssFailure(400, "MalformedXML", "PartNumber is not a number.") from None
        if not listed:
            raise OssFailure(400, "MalformedXML", "The XML you provided was not well-formed.")
        numbers = [number for number, _ in listed]
        if numbers != sorted(set(numbers)):
            raise OssFailure(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. "
                "Parts must be ordered by part number.",
            )
        parts = []
        for index, (number, etag) in enumerate(listed):
            try:
                part = json.loads((folder / f"part-{number:05d}.json").read_text())
            except FileNotFoundError:
                raise OssFailure(
                    400, "InvalidPart", "One or more of the specified parts could not be found."
                ) from None
            if part["etag"] != etag:
                raise OssFailure(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts could not be found or the specified "
                    "entity tag might not have matched the part's entity tag.",
                )
            if index < len(listed) - 1 and part["size"] < self.owner.min_part_size:
                raise OssFailure(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size.",
                )
            parts.append((number, part))
        tmp = self.owner.new_tmp()
        crc = crc64()
        digests = hashlib.md5()
        try:
            with open(tmp, "wb") as out:
                for number, part in parts:
                    with open(folder / f"part-{number:05d}", "rb") as f:
                        while block := f.read(BLOCK):
                            out.write(block)
                            crc.update(block)
                    digests.update(bytes.fromhex(part["md5"]))
            etag = f"{digests.hexdigest().upper()}-{len(parts)}"
            meta = ObjectMeta(
                etag, crc.crcValue, "Multipart", info["content_type"], info["user_meta"]
            )
            self.owner.commit(self.bucket, self.key, tmp, meta)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        encoded = self.query.get("encoding-type") == "url"
        result = ET.Element("CompleteMultipartUploadResult")
        if encoded:
            _child(result, "EncodingType", "url")
        _child(result, "Location", f"{self.owner.endpoint}/{self.bucket}/{quote(self.key)}")
        _child(result, "Bucket", self.bucket)
        _child(result, "Key", quote(self.key, safe="") if encoded else self.key)
        _child(result, "ETag", f'"{etag}"')
        headers = {"ETag": f'"{etag}"', "x-oss-hash-crc64ecma": str(crc.crcValue)}
        return self._respond(200, headers, _xml(result))

    def _op_AbortMultipartUpload(self) -> int:
        self._drain()
        upload_id = self.query["uploadId"]
        self.owner.upload_info(self.bucket, self.key, upload_id)
        shutil.rmtree(self.owner.upload_dir(upload_id), ignore_errors=True)
        return self._respond(204)


def signed_request_headers(
    method: str, bucket: str, key: str, secret: str, key_id: str, **headers: str
) -> dict[str, str]:
    """Headers for a request signed with the V1 scheme, for tests that talk to the server
    without ``oss2`` (a wrong secret gives a bad signature)."""
    date = _http_date(time.time())
    oss = "".join(
        f"{name.lower()}:{value}\n"
        for name, value in sorted(headers.items(), key=lambda item: item[0].lower())
        if name.lower().startswith("x-oss-")
    )
    string_to_sign = "\n".join(
        [
            method,
            headers.get("Content-MD5", ""),
            headers.get("Content-Type", ""),
            date,
            f"{oss}/{bucket}/{key}",
        ]
    )
    signature = base64.b64encode(
        hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    ).decode()
    return {**headers, "Date": date, "Authorization": f"OSS {key_id}:{signature}"}


__all__ = [
    "DEFAULT_KEY_ID",
    "DEFAULT_KEY_SECRET",
    "OPERATIONS",
    "Fault",
    "OssTestServer",
    "signed_request_headers",
]
