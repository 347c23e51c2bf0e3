"""Bearer tokens of the Docker registry token specification: JWTs signed with RS256/384/512
(RSA keys) or ES256/384/512 (EC keys on P-256, P-384, P-521), carrying ``access`` claims
``[{type, name, actions}]``.

The gateway issues them at ``/auth/token`` with its private key
(``REGISTRY_AUTH_TOKEN_PRIVATE_KEY_FILE``), and trusts those and any signed by the public keys
or certificates of ``REGISTRY_AUTH_TOKEN_PUBLIC_KEY_FILE`` (an external issuer, or the keys of
a rotation). Verification accepts only the asymmetric algorithm each trusted key is for:
``alg: none``, HMAC (including HMAC keyed with a public key) and any other algorithm are
refused before a signature is looked at. Issuer, audience (the service), expiry and
not-before are required or checked on every token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger("registry.auth")

LEEWAY_SECONDS = 5  # clock skew between an external issuer and this gateway
REFRESH_USE = "refresh"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class InvalidToken(Exception):
    """The token is refused; the message says why (never the token)."""


@dataclass(frozen=True, slots=True)
class TrustedKey:
    key: PublicKey
    algorithm: str
    kid: str


def _algorithm(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"an RSA key of {key.key_size} bits is too weak (2048 at least)")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"EC curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return algorithm
    raise ValueError(f"{type(key).__name__} keys are not supported (RSA or EC)")


def key_id(key: PublicKey) -> str:
    """The key's id in libtrust's form (what the reference registry's tokens carry as ``kid``):
    the SHA-256 of its DER SubjectPublicKeyInfo, truncated to 240 bits, base32, in groups of 4."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _trusted(key: PublicKey) -> list[TrustedKey]:
    algorithm = _algorithm(key)
    if algorithm == "RS256":
        # An RSA key verifies each RSASSA-PKCS1-v1_5 size; never PSS, HMAC or none.
        return [TrustedKey(key, alg, key_id(key)) for alg in ("RS256", "RS384", "RS512")]
    return [TrustedKey(key, algorithm, key_id(key))]


def load_public_keys(path: Path) -> list[PublicKey]:
    """Every public key and certificate (its key) of a PEM file."""
    data = path.read_bytes()
    keys: list[PublicKey] = []
    for block in _PEM_BLOCK.finditer(data):
        kind = block.group(1)
        if kind == b"CERTIFICATE":
            key: Any = x509.load_pem_x509_certificate(block.group(0)).public_key()
        elif kind in (b"PUBLIC KEY", b"RSA PUBLIC KEY"):
            key = serialization.load_pem_public_key(block.group(0))
        else:
            raise ValueError(f"{path}: a {kind.decode()} block is not a public key")
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"{path}: {type(key).__name__} keys are not supported (RSA or EC)")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no PEM public key or certificate found")
    return keys


def load_private_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: {type(key).__name__} keys are not supported (RSA or EC)")
    _algorithm(key.public_key())
    return key


def generate_private_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class TokenKeys:
    """The keys tokens are verified with, and the one they are issued with (if any)."""

    def __init__(
        self, signing: PrivateKey | None, trusted: list[PublicKey], *, issuer: str, audience: str
    ) -> None:
        self.signing = signing
        self.issuer = issuer
        self.audience = audience
        public = [signing.public_key()] if signing is not None else []
        self.trusted = [t for key in [*public, *trusted] for t in _trusted(key)]
        self.algorithms = frozenset(t.algorithm for t in self.trusted)
        self.signing_algorithm = ""
        self.signing_kid = ""
        self._stamp_key = b""
        if signing is not None:
            self.signing_algorithm = _algorithm(signing.public_key())
            self.signing_kid = key_id(signing.public_key())
            der = signing.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # A secret only this issuer knows, for the password stamp of refresh tokens.
            self._stamp_key = hashlib.sha256(b"registry refresh tokens\0" + der).digest()

    # --- issuing ----------------------------------------------------------------------------

    def issue(self, subject: str, access: list[dict[str, Any]], ttl: int) -> tuple[str, int]:
        """An access token for ``subject`` ("" for anonymous); returns it and its issue time."""
        now = int(time.time())
        return self._sign(subject, self.audience, now, ttl, {"access": access}), now

    def issue_refresh(self, subject: str, password_hash: bytes, ttl: int) -> str:
        """A refresh token (OAuth2 ``refresh_token``): valid only at the token endpoint, only
        while the user exists with the same password."""
        extra = {"token_use": REFRESH_USE, "pwd": self.password_stamp(password_hash)}
        return self._sign(subject, self._refresh_audience, int(time.time()), ttl, extra)

    def password_stamp(self, password_hash: bytes) -> str:
        return hmac.new(self._stamp_key, password_hash, hashlib.sha256).hexdigest()[:32]

    @property
    def _refresh_audience(self) -> str:
        return f"{self.audience}#refresh"

    def _sign(self, subject: str, audience: str, now: int, ttl: int, extra: dict[str, Any]) -> str:
        if self.signing is None:
            raise RuntimeError("this gateway has no key to issue tokens with")
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            **extra,
        }
        return jwt.encode(
            claims,
            self.signing,
            algorithm=self.signing_algorithm,
            headers={"kid": self.signing_kid, "typ": "JWT"},
        )

    # --- verifying --------------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token, or :class:`InvalidToken`."""
        claims = self._decode(token, self.audience)
        if claims.get("token_use", "access") != "access":
            raise InvalidToken("not an access token")
        return claims

    def verify_refresh(self, token: str) -> dict[str, Any]:
        claims = self._decode(token, self._refresh_audience)
        if claims.get("token_use") != REFRESH_USE or not isinstance(claims.get("sub"), str):
            raise InvalidToken("not a refresh token")
        return claims

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise InvalidToken("signing algorithm not accepted")
        candidates = [t for t in self.trusted if t.algorithm == algorithm]
        kid = header.get("kid")
        by_kid = [t for t in candidates if t.kid == kid]
        for trusted in by_kid or candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    trusted.key,
                    algorithms=[trusted.algorithm],
                    audience=audience,
                    issuer=self.issuer,
                    leeway=LEEWAY_SECONDS,
                    options={"require": ["exp", "iss", "aud"], "verify_signature": True},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise InvalidToken("token expired") from None
            except jwt.ImmatureSignatureError:
                raise InvalidToken("token not yet valid") from None
            except jwt.InvalidAudienceError:
                raise InvalidToken("token not for this service") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken("token from an untrusted issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"token without the {exc.claim} claim") from None
            except jwt.PyJWTError:
                raise InvalidToken("malformed token") from None
            return claims
        raise InvalidToken("token signature invalid")


def access_of(claims: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """The ``access`` claim as ``{(type, name): actions}``; malformed: :class:`InvalidToken`."""
    access = claims.get("access", [])
    if not isinstance(access, list):
        raise InvalidToken("malformed access claim")
    granted: dict[tuple[str, str], frozenset[str]] = {}
    for entry in access:
        if not isinstance(entry, dict):
            raise InvalidToken("malformed access claim")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if (
            not isinstance(kind, str)
            or not isinstance(name, str)
            or not isinstance(actions, list)
            or not all(isinstance(a, str) for a in actions)
        ):
            raise InvalidToken("malformed access claim")
        key = (kind, name)
        granted[key] = granted.get(key, frozenset()) | frozenset(actions)
    return granted


def keys_from_settings(
    *,
    private_key_file: str,
    public_key_file: str,
    issuer: str,
    audience: str,
) -> TokenKeys:
    signing: PrivateKey | None = None
    if private_key_file:
        signing = load_private_key(Path(private_key_file))
    trusted = load_public_keys(Path(public_key_file)) if public_key_file else []
    if signing is None and not trusted:
        log.warning(
            "REGISTRY_AUTH=token without a key file: tokens are signed with a key made at "
            "startup, which another gateway replica does not know and a restart forgets; "
            "set REGISTRY_AUTH_TOKEN_PRIVATE_KEY_FILE"
        )
        signing = generate_private_key()
    return TokenKeys(signing, trusted, issuer=issuer, audience=audience)
