"""Secrets of a launch: random values, PKCE, and encryption of tokens at rest.

`FernetCipher` encrypts with the first of its keys and decrypts with any of them, so a key is rotated by putting
the new one first and dropping the old one once the launches it protects have expired (hours). Keys come either
as Fernet keys or are derived (HKDF-SHA256, own `info`) from the app secret, so that the same secret used for CSRF
tokens never serves as an encryption key directly.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bff.smart.errors import SmartConfigError, TokenCipherError

TOKEN_BYTES = 32  # 256 bits for state, nonce and launch handles (Epic asks for ≥ 122)
VERIFIER_BYTES = 64  # 86 characters, within PKCE's 43-128
_HKDF_INFO = b"glucobridge bff.smart token encryption v1"


def random_token(nbytes: int = TOKEN_BYTES) -> str:
    """A URL-safe random string of `nbytes` bytes of entropy."""
    return secrets.token_urlsafe(nbytes)


def pkce_verifier() -> str:
    """A PKCE code verifier (RFC 7636 §4.1: 43-128 unreserved characters)."""
    return secrets.token_urlsafe(VERIFIER_BYTES)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def digest(secret: str) -> str:
    """The SHA-256 (hex) under which a bearer secret (state, launch handle) is stored or locked."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenCipher(Protocol):
    """Encrypts tokens before they reach the store, and decrypts them on the way out."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, ciphertext: str) -> str: ...


class FernetCipher:
    """Fernet (AES-128-CBC + HMAC-SHA256, versioned and timestamped); several keys for rotation."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise SmartConfigError("no token encryption key configured")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError):
            raise SmartConfigError("a token encryption key is not a valid Fernet key") from None

    @classmethod
    def from_secrets(cls, app_secrets: Sequence[bytes]) -> FernetCipher:
        """Keys derived from app secrets (first one encrypts), each at least 16 bytes."""
        if any(len(s) < 16 for s in app_secrets):
            raise SmartConfigError("the app secret is too short to derive a token key from (16 bytes at least)")
        return cls([derive_key(s) for s in app_secrets])

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise TokenCipherError("a stored token cannot be decrypted with the configured keys") from None


def derive_key(app_secret: bytes) -> bytes:
    """A Fernet key derived from the app secret with HKDF-SHA256 (domain-separated by its `info`)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(app_secret)
    return base64.urlsafe_b64encode(raw)


__all__ = [
    "FernetCipher",
    "TokenCipher",
    "derive_key",
    "digest",
    "pkce_challenge",
    "pkce_verifier",
    "random_token",
]
