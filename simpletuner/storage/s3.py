"""An S3 bucket (AWS or any S3-compatible server) as a :class:`~simpletuner.storage.base.Storage`.

boto3 is imported only when a bucket is first used.  One client is made per
dataset's settings and shared by its threads (boto3 clients are thread-safe).
Credentials come from the dataset's ``aws_access_key_id`` /
``aws_secret_access_key`` keys, or, when both are absent, from boto3's usual
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and
``~/.aws``, instance roles).  They are never part of a message or a repr:
errors name the key that holds them, not its value.

A PUT replaces an object in one step, so writes are atomic without the
temporary-file dance a folder needs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

from simpletuner.storage.base import Storage, StorageError, StoredObject

SCHEME = "s3://"
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled",
})
_WRONG_REGION = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})
_POOL = 32  # HTTP connections per client: more than the threads discovery runs


def is_s3_url(value: Optional[str]) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def split_s3_url(value: str) -> Tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix is "" or ends in "/"."""
    bucket, _, prefix = value[len(SCHEME):].partition("/")
    return bucket, normalise_prefix(prefix)


def normalise_prefix(prefix: Optional[str]) -> str:
    prefix = (prefix or "").strip("/")
    return prefix + "/" if prefix else ""


class _ClientSlot:
    """Holds the lazily made client; never copied or pickled with the settings."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Any = None

    def __reduce__(self) -> Tuple[type, tuple]:
        return (_ClientSlot, ())

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_ClientSlot":
        return _ClientSlot()


@dataclass(frozen=True)
class S3Settings:
    """How one dataset reaches S3.  ``owner`` ("dataset 'x'") starts every message."""

    owner: str
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    access_key_id: Optional[str] = field(default=None, repr=False)
    secret_access_key: Optional[str] = field(default=None, repr=False)
    _slot: _ClientSlot = field(default_factory=_ClientSlot, repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        """The endpoint as users know it, for messages."""
        return self.endpoint_url or f"AWS S3 ({self.region or 'default region'})"

    def client(self) -> Any:
        """The shared boto3 client, made on first use."""
        with self._slot.lock:
            if self._slot.client is None:
                self._slot.client = _make_client(self)
            return self._slot.client

    def storage(self, bucket: str, prefix: str, key: str) -> "S3Storage":
        """``bucket``/``prefix`` as a Storage; ``key`` is the config key named when it fails."""
        return S3Storage(self, bucket, normalise_prefix(prefix), key)

    def secrets(self) -> Tuple[str, ...]:
        return tuple(s for s in (self.access_key_id, self.secret_access_key) if s)


def _make_client(settings: S3Settings) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError(f"{settings.owner}: type 'aws' needs boto3; install it with: pip install boto3") from None

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=_POOL,
        # S3-compatible servers (MinIO, Ceph, moto...) rarely resolve bucket subdomains.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    try:
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        )
        return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise StorageError(
            f"{settings.owner}: key 'aws_endpoint_url' = {settings.endpoint_url!r} is not a usable URL "
            f"({_scrub(str(exc), settings)}); write it like https://s3.example.com"
        ) from None
    except Exception as exc:  # a broken AWS profile or config file
        raise StorageError(
            f"{settings.owner}: cannot set up the S3 client ({type(exc).__name__}: {_scrub(str(exc), settings)}); "
            "check the aws_* keys, AWS_PROFILE and ~/.aws/config"
        ) from None


class S3Storage(Storage):
    workers = 16  # requests wait on the network, not the CPU

    def __init__(self, settings: S3Settings, bucket: str, prefix: str, key: str) -> None:
        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix
        self.key = key

    def __repr__(self) -> str:
        return f"S3Storage({self.location()!r})"

    def location(self, name: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{name}"

    def _call(self, operation: str, name: Optional[str], **kwargs: Any) -> Any:
        client = self.settings.client()
        try:
            return getattr(client, operation)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise _translate(exc, self, operation, name) from None

    def read(self, name: str) -> bytes:
        response = self._call("get_object", name, Key=self.prefix + name)
        return _body(response, self, name)

    def read_head(self, name: str, count: int) -> Tuple[bytes, int]:
        try:
            response = self._call("get_object", name, Key=self.prefix + name, Range=f"bytes=0-{count - 1}")
        except _EmptyObject:
            return b"", 0
        data = _body(response, self, name)
        return data, _total_size(response, len(data))

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        try:
            response = self._call("get_object", name, Key=self.prefix + name, Range=f"bytes={start}-{stop - 1}")
        except _EmptyObject:
            return b""
        return _body(response, self, name)

    def write(self, name: str, data: bytes, durable: bool = False) -> None:
        self._call("put_object", name, Key=self.prefix + name, Body=data)

    def exists(self, name: str) -> bool:
        try:
            self._call("head_object", name, Key=self.prefix + name)
        except FileNotFoundError:
            return False
        return True

    def delete(self, name: str) -> None:
        self._call("delete_object", name, Key=self.prefix + name)

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        token: Optional[str] = None
        start = len(self.prefix)
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", None, Prefix=self.prefix + prefix, **extra)
            for item in page.get("Contents", ()):
                modified = item.get("LastModified")
                mtime_ns = int(modified.timestamp() * 1_000_000) * 1000 if modified is not None else 0
                yield StoredObject(item["Key"][start:], int(item.get("Size", 0)), mtime_ns)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def child(self, name: str) -> "S3Storage":
        return S3Storage(self.settings, self.bucket, normalise_prefix(self.prefix + name), self.key)

    def check(self) -> None:
        """One cheap request that proves endpoint, credentials and bucket (raises StorageError)."""
        self._call("list_objects_v2", None, Prefix=self.prefix, MaxKeys=1)


class _EmptyObject(Exception):
    """A ranged read of a zero-byte object (S3 answers 416 InvalidRange)."""


def _body(response: Dict[str, Any], storage: S3Storage, name: str) -> bytes:
    try:
        return response["Body"].read()
    except Exception as exc:  # the connection dropped mid-body
        raise _translate(exc, storage, "get_object", name) from None


def _total_size(response: Dict[str, Any], fallback: int) -> int:
    content_range = response.get("ContentRange") or ""
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    return int(response.get("ContentLength", fallback))  # the server ignored Range: this is everything


def _translate(exc: Exception, storage: S3Storage, operation: str, name: Optional[str]) -> Exception:
    """A boto3/botocore exception as FileNotFoundError (missing object) or a one-line StorageError."""
    from botocore import exceptions as errors

    settings, where = storage.settings, storage.location(name or "")
    bucket_key = storage.key
    if isinstance(exc, errors.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _NOT_FOUND and name is not None:
            return FileNotFoundError(2, "no such object", where)
        if code == "InvalidRange" and name is not None:
            return _EmptyObject()
        if code == "NoSuchBucket" or (code in _NOT_FOUND and name is None):
            return StorageError(
                f"{settings.owner}: key {bucket_key!r}: bucket {storage.bucket!r} does not exist at "
                f"{settings.endpoint}; create it or fix the bucket name"
            )
        if code in _WRONG_REGION:
            return StorageError(
                f"{settings.owner}: bucket {storage.bucket!r} is not in region {settings.region or 'default'} "
                f"({code}); set key 'aws_region_name' to the bucket's region"
            )
        if code in _REFUSED:
            return StorageError(
                f"{settings.owner}: S3 at {settings.endpoint} refused the request for {storage.location()} "
                f"({code}); check keys 'aws_access_key_id' and 'aws_secret_access_key'"
                f"{_credential_source(settings)} and that they may read and write that bucket"
            )
        message = _scrub(str(error.get("Message", "")), settings)
        return StorageError(
            f"{settings.owner}: S3 {operation} of {where} failed ({code}: {message}); "
            f"check key {bucket_key!r} and the bucket's settings"
        )
    if isinstance(exc, errors.NoCredentialsError):
        return StorageError(
            f"{settings.owner}: no S3 credentials found; set keys 'aws_access_key_id' and "
            "'aws_secret_access_key', or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment "
            "variables, or an AWS profile"
        )
    if isinstance(exc, (errors.EndpointConnectionError, errors.ConnectionError, errors.HTTPClientError)):
        reason = type(exc).__name__
        return StorageError(
            f"{settings.owner}: cannot reach S3 at {settings.endpoint} ({reason}); check key "
            "'aws_endpoint_url' (and 'aws_region_name'), and that the server is running and reachable"
        )
    if isinstance(exc, errors.BotoCoreError):
        return StorageError(
            f"{settings.owner}: S3 {operation} of {where} failed ({type(exc).__name__}: "
            f"{_scrub(str(exc), settings)}); check the dataset's aws_* keys"
        )
    return exc


def _credential_source(settings: S3Settings) -> str:
    if settings.access_key_id or settings.secret_access_key:
        return ""
    return " (not set, so boto3 took them from the AWS environment variables or profile)"


def _scrub(text: str, settings: S3Settings) -> str:
    """Server and library messages must not carry a credential into our output."""
    for secret in settings.secrets():
        text = text.replace(secret, "***redacted***")
    return " ".join(text.split())[:200]
