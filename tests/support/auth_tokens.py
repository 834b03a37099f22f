"""Auth test kit: RSA 2048 / EC P-256 signing keys with their JWKs, forged tokens, and a tiny protected app."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from services.common.auth import AdminPrincipal, CurrentPrincipal, TokenVerifier, install_verifier
from services.common.http.errors import install_error_handlers

HS_SECRET = "test-hs256-secret-0123456789-abcdefghijklmnop"


@dataclass(frozen=True)
class SigningKey:
    """A private key an IdP would sign with, and the public JWK it would publish."""

    kid: str
    algorithm: str  # RS256 or ES256
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        text = RSAAlgorithm.to_jwk(public) if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm.to_jwk(public)
        return {**json.loads(text), "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": kid or self.kid})


@functools.cache
def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.cache
def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks_body(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [key.public_jwk() for key in keys]}).encode()


def claims(sub: Any = "owner-1", *, ttl: int = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl, **extra}


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token PyJWT would refuse to make: unsigned (`alg: none`), or HMAC-signed with any bytes (a public key)."""
    signing_input = f"{_segment(json.dumps(header).encode())}.{_segment(json.dumps(payload).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(signature)}"


def protected_app(verifier: TokenVerifier) -> FastAPI:
    """An app with the uniform error handlers, `/me` for any caller and `/admin` for admins."""
    app = FastAPI()
    install_error_handlers(app)
    install_verifier(app, verifier)

    @app.get("/me")
    async def me(principal: CurrentPrincipal) -> dict[str, Any]:
        return {"subject": principal.subject, "is_admin": principal.is_admin}

    @app.get("/admin")
    async def admin(principal: AdminPrincipal) -> dict[str, Any]:
        return {"subject": principal.subject}

    return app
