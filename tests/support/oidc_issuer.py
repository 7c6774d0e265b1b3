"""A small OpenID Connect issuer for the single sign-on tests: discovery, JWKS (with key
rotation), an authorization endpoint that approves a test user at once (authorization code
with PKCE S256 only), a token endpoint, an end-session endpoint, and signed tokens on demand
(good ones and every kind of bad one) for the bearer tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "botfactory-gateway"
CLIENT_SECRET = "test-client-secret-0123456789"
USER = {"sub": "user-ada", "email": "ada@example.com", "name": "Ada",
        "botfactory_roles": {"acme": ["admin"]}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    user: dict[str, Any]


@dataclass
class TestIssuer:
    """Start with `await issuer.start()`; `issuer.url` is the issuer (http://127.0.0.1:port)."""

    __test__ = False  # not a pytest class

    user: dict[str, Any] = field(default_factory=lambda: dict(USER))
    client_secret: str | None = None  # set: the token endpoint requires it (HTTP Basic)
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    active: str = ""
    jwks_fetches: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, _Code] = field(default_factory=dict)
    server: TestServer | None = None

    async def start(self) -> TestIssuer:
        self.rotate()
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token_endpoint)
        app.router.add_get("/logout", self.end_session)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    # -- keys ----------------------------------------------------------------------------------

    def rotate(self, *, keep_old: bool = True) -> str:
        """A new signing key becomes the active one (the old stays in the JWKS unless not
        `keep_old`); its kid."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(3)}"
        if not keep_old:
            self.keys.clear()
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.active = kid
        return kid

    def public_pem(self, kid: str | None = None) -> bytes:
        return self.keys[kid or self.active].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # -- tokens --------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.url, "aud": CLIENT_ID, "iat": now, "exp": now + 300, **self.user}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, *, kid: str | None = None, **overrides: Any) -> str:
        """A token signed with the active key (or `kid`), with these claims changed (a claim
        set to None is left out)."""
        kid = kid or self.active
        return jwt.encode(self.claims(**overrides), self.keys[kid], algorithm="RS256",
                          headers={"kid": kid})

    def unsigned(self, **overrides: Any) -> str:
        """alg: none."""
        header = {"alg": "none", "typ": "JWT", "kid": self.active}
        return (f"{b64(json.dumps(header).encode())}."
                f"{b64(json.dumps(self.claims(**overrides)).encode())}.")

    def hs256_with_public_key(self, **overrides: Any) -> str:
        """HS256 whose "secret" is the issuer's public key (the key-confusion attack)."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.active}
        signing_input = (f"{b64(json.dumps(header).encode())}."
                         f"{b64(json.dumps(self.claims(**overrides)).encode())}")
        signature = hmac.new(self.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"

    def tampered(self, **changes: Any) -> str:
        """A good token whose payload was changed after signing."""
        header, payload, signature = self.token().split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes)
        return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"

    def foreign(self, **overrides: Any) -> str:
        """Signed by a key the issuer never published, under the active kid."""
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(self.claims(**overrides), other, algorithm="RS256",
                          headers={"kid": self.active})

    # -- endpoints -----------------------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
            "end_session_endpoint": f"{self.url}/logout",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"]})

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        keys = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def authorize(self, request: web.Request) -> web.Response:
        """Approves the test user at once (no login page): a code for the redirect URI."""
        q = request.query
        if q.get("response_type") != "code" or q.get("client_id") != CLIENT_ID:
            return web.json_response({"error": "unauthorized_client"}, status=400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.json_response({"error": "invalid_request",
                                      "error_description": "PKCE S256 required"}, status=400)
        if "openid" not in q.get("scope", "").split() or not q.get("redirect_uri"):
            return web.json_response({"error": "invalid_scope"}, status=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = _Code(CLIENT_ID, q["redirect_uri"], q["code_challenge"],
                                 q.get("nonce", ""), dict(self.user))
        query = urlencode({"code": code, "state": q.get("state", "")})
        raise web.HTTPFound(f"{q['redirect_uri']}?{query}")

    async def token_endpoint(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        if self.client_secret is not None:
            expected = "Basic " + base64.b64encode(
                f"{CLIENT_ID}:{self.client_secret}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response({"error": "invalid_client"}, status=401)
        code = self.codes.pop(form.get("code", ""), None)  # a code works once
        if form.get("grant_type") != "authorization_code" or code is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = form.get("code_verifier", "")
        if b64(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "PKCE verifier"}, status=400)
        if form.get("redirect_uri") != code.redirect_uri or form.get("client_id") != CLIENT_ID:
            return web.json_response({"error": "invalid_grant"}, status=400)
        id_token = self.token(nonce=code.nonce, **code.user)
        access = self.token(**code.user)
        return web.json_response({"id_token": id_token, "access_token": access,
                                  "token_type": "Bearer", "expires_in": 300})

    async def end_session(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("post_logout_redirect_uri", "/"))
