"""The fsspec plumbing of URL stores: which filesystem a URL names, its options, and checks made
before any work (a scheme without an installed filesystem, a bucket that does not exist).

Credentials and endpoints come from each filesystem's standard environment (for s3fs:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, or a profile), plus
`LMFORGE_STORE_OPTIONS`, a JSON object of fsspec storage options (e.g. `{"anon": false}`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import split_protocol
from fsspec.spec import AbstractFileSystem

from lmforge.core.errors import ConfigError

OPTIONS_ENV = "LMFORGE_STORE_OPTIONS"
CACHE_ENV = "LMFORGE_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/lmforge"
# The package that provides a scheme's filesystem, for the error message when it is missing.
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(location: str | Path) -> bool:
    """Whether `location` names an fsspec URL store (`file://` counts as a local path)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path_of(location: str | Path) -> Path:
    """A local store location as a path (`file:///x` -> `/x`)."""
    text = str(location)
    return Path(text.removeprefix("file://")) if text.startswith("file://") else Path(text)


def lmforge_cache_dir() -> Path:
    """This machine's lmforge cache folder: `${LMFORGE_CACHE_DIR:-~/.cache/lmforge}`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_root(url: str) -> Path:
    """This node's cache of a URL store: `${LMFORGE_CACHE_DIR:-~/.cache/lmforge}/stores/<hash>/`."""
    return (lmforge_cache_dir() / "stores" / hashlib.sha256(url.encode()).hexdigest()[:16]).resolve()


def storage_options(protocol: str) -> dict[str, Any]:
    """`LMFORGE_STORE_OPTIONS`, plus the S3 endpoint from `AWS_ENDPOINT_URL` made explicit.

    botocore reads AWS_ENDPOINT_URL itself; naming it in the options as well keeps it in the
    filesystem when that is pickled to a Ray worker whose environment lacks it.
    """
    text = os.environ.get(OPTIONS_ENV)
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"store: ${OPTIONS_ENV} is not valid JSON ({err}); expected an object") from None
    if not isinstance(options, dict):
        raise ConfigError(f"store: ${OPTIONS_ENV} must be a JSON object of fsspec storage options")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if protocol in ("s3", "s3a") and endpoint and "endpoint_url" not in options:
        client_kwargs = dict(options.get("client_kwargs") or {})
        client_kwargs.setdefault("endpoint_url", endpoint)
        options["client_kwargs"] = client_kwargs
    return options


def open_location(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem of a store URL and the store's path on it (no scheme); ConfigError if none."""
    protocol, _ = split_protocol(url)
    if not protocol:
        raise ConfigError(f"store: {url!r} is not a URL; expected scheme://bucket/prefix or a local path")
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as err:
        package = PACKAGES.get(protocol)
        hint = f"install {package}" if package else "install its fsspec package, e.g. s3fs for s3://"
        raise ConfigError(
            f"store: no filesystem for scheme {protocol!r} in {url!r} ({hint}): {err}"
        ) from None
    try:
        fs = cls(**storage_options(protocol))
    except ConfigError:
        raise
    except Exception as err:  # the filesystem rejected its options or credentials
        raise ConfigError(f"store: cannot open {url!r}: {type(err).__name__}: {err}") from None
    path = cls._strip_protocol(url).rstrip("/")
    return fs, path


def check_bucket(fs: AbstractFileSystem, url: str, path: str) -> None:
    """For object stores (filesystems whose paths start with a bucket): the bucket must exist."""
    if not hasattr(fs, "split_path"):
        return  # no buckets (memory://, sftp://, ...): the prefix is created as files are written
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"store: {url!r} names no bucket; expected scheme://bucket/prefix")
    fs.invalidate_cache()  # a listing of buckets may be cached from before it was created
    try:
        exists = fs.exists(bucket)
    except PermissionError as err:
        raise ConfigError(
            f"store: no access to bucket {bucket!r} of {url!r} ({err}); check credentials"
        ) from None
    except Exception as err:  # endpoint unreachable, bad credentials, ...
        raise ConfigError(
            f"store: cannot reach bucket {bucket!r} of {url!r} ({type(err).__name__}: {err}); "
            "check the endpoint and credentials in the environment"
        ) from None
    if not exists:
        raise ConfigError(
            f"store: bucket {bucket!r} of {url!r} does not exist "
            "(create it first, or check the endpoint and credentials in the environment)"
        )


def check_location(url: str) -> tuple[AbstractFileSystem, str]:
    """Open a store URL and check its bucket: a ConfigError starting `store: ` before any work."""
    fs, path = open_location(url)
    check_bucket(fs, url, path)
    return fs, path


def arrow_filesystem(fs: AbstractFileSystem) -> Any:
    """A pyarrow filesystem over `fs` (what Ray Train's `RunConfig(storage_filesystem=...)` takes)."""
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
