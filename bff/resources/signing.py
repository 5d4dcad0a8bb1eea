"""Optional JWS (ES256) signatures over an outcome's input digest, with the deployment's key.

`SIGNING_KEY_FILE` names a PEM EC P-256 private key; its public half (PEM) verifies. The signed payload is
`bff.resources.fhir.signing_payload(record)`: the SHA-256 of the readings with the window, policy hash, engine
version, patient and outcome version, so a signature vouches for exactly what the Provenance describes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey


class SigningError(ValueError):
    """The key cannot be used, or a signature does not verify."""


def _kid(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem).hexdigest()[:16]


def load_signer(path: str | Path) -> Callable[[bytes], str]:
    """A function that signs bytes as a compact JWS with the private key in `path`."""
    try:
        key = ECKey.import_key(Path(path).read_bytes())
    except (OSError, ValueError, JoseError) as exc:
        raise SigningError(f"cannot use the signing key {path}: {exc}") from None
    if not key.is_private:
        raise SigningError(f"{path} holds a public key; signing needs the private key")
    kid = _kid(key.as_pem(private=False))

    def sign(payload: bytes) -> str:
        return jws.serialize_compact({"alg": "ES256", "kid": kid}, payload, key)

    return sign


def verify_jws(token: str, public_pem: bytes) -> bytes:
    """The payload of a compact JWS signed by the key whose public PEM is given; SigningError if it does not verify."""
    try:
        key = ECKey.import_key(public_pem)
        return jws.deserialize_compact(token, key, algorithms=["ES256"]).payload
    except (ValueError, JoseError) as exc:
        raise SigningError(f"the signature does not verify: {exc}") from None


def generate_key_pem() -> tuple[bytes, bytes]:
    """A new (private, public) PEM pair, for `glucobridge keys new` and tests."""
    key = ECKey.generate_key("P-256")
    return key.as_pem(private=True), key.as_pem(private=False)
