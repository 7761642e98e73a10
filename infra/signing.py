"""Ed25519 key pairs and detached signatures for release manifests (`lmforge keygen`, `--sign`).

Keys are PEM files: the private key in PKCS#8 (written readable by its owner only), the public key
as SubjectPublicKeyInfo beside it (`<key>.pub`). A signature is the 64-byte Ed25519 signature of
the exact bytes of the signed file, stored base64-encoded in a one-line text file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lmforge.core.errors import ConfigError, LmforgeError


class SignatureError(LmforgeError):
    """A signature that does not verify, or a key that cannot be used."""

    exit_code = 1


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def generate_key_pair(private_key: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: `private_key` (mode 0600) and `private_key`.pub."""
    public_key = public_key_path(private_key)
    existing = [str(path) for path in (private_key, public_key) if path.exists()]
    if existing and not overwrite:
        raise ConfigError(f"keygen: {', '.join(existing)} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_key.parent.mkdir(parents=True, exist_ok=True)
    # Created with owner-only permissions from the start: the key is never world-readable.
    descriptor = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_key.write_bytes(public_pem(key.public_key()))
    return private_key, public_key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"--sign: no key file {path} (make one with `lmforge keygen`)") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--sign: {path} is not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--sign: {path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise SignatureError(f"{source} is not a PEM public key: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source} holds a {type(key).__name__}, expected an Ed25519 public key")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, hex: how a key is named in messages and release.json."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """The detached signature of `data`, base64 text (one line)."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def check_signature(
    key: Ed25519PublicKey, data: bytes, signature_text: str, source: str, signed: str = "the signed file"
) -> None:
    """SignatureError naming the signature file `source` and the `signed` file unless `signature_text`
    is `key`'s signature of `data`."""
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{source} is not a base64 signature (was it changed?)") from None
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(
            f"{source} does not verify {signed} with key {key_fingerprint(key)[:16]}: {signed} or "
            "the signature was changed after signing, or another key signed it"
        ) from None
