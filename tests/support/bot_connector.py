"""A stand-in for Microsoft's side of the Bot Framework (tests of the Teams channel): an RSA
signing key published as OpenID metadata + JWKS, Bot Connector JWTs signed with it, the
activities Teams posts, and the answers of the token endpoint and the connector, served by
a FakePlatform (tests/support/fake_platform.py) on loopback."""

from __future__ import annotations

import itertools
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

APP_ID = "3f2a9c4e-1b7d-4e8a-9c65-0d2f4b8e7a13"
ISSUER = "https://api.botframework.com"
METADATA_PATH = "/v1/.well-known/openidconfiguration"
KEYS_PATH = "/v1/.well-known/keys"
TOKEN_PATH = "/botframework.com/oauth2/v2.0/token"
ACCESS_TOKEN = "connector-access-token"


class Signer:
    """One RSA key, as the Bot Connector signs with (`kid`, endorsed for `msteams`)."""

    def __init__(self, kid: str = "key-1", endorsements: tuple[str, ...] = ("msteams",)) -> None:
        self.kid = kid
        self.endorsements = endorsements
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig",
                "endorsements": list(self.endorsements)}

    def token(self, service_url: str, *, audience: str = APP_ID, issuer: str = ISSUER,
              expires_in: float = 3600, kid: str | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": issuer, "aud": audience, "serviceUrl": service_url, "nbf": now - 5,
                "iat": now - 5, "exp": int(now + expires_in), **claims}
        return jwt.encode(body, self.private, algorithm="RS256",
                          headers={"kid": kid or self.kid})


class Microsoft:
    """The answers of the login service and the connector, for FakePlatform(answer=...):
    the metadata names the JWKS on the same fake (`base`, set once it is started)."""

    def __init__(self, *signers: Signer) -> None:
        self.signers = list(signers)
        self.base = ""
        self._ids = itertools.count(1)

    def __call__(self, path: str, body: Any) -> Any:
        if path == METADATA_PATH:
            return {"issuer": ISSUER, "jwks_uri": f"{self.base}{KEYS_PATH}",
                    "id_token_signing_alg_values_supported": ["RS256"]}
        if path == KEYS_PATH:
            return {"keys": [signer.jwk() for signer in self.signers]}
        if path == TOKEN_PATH:
            return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                    "access_token": ACCESS_TOKEN}
        return {"id": f"reply-{next(self._ids)}"}

    def settings(self) -> dict[str, str]:
        """The channel settings that point the Teams channel at this fake."""
        return {"app_id": APP_ID, "app_password": "app-password-for-tests",
                "openid_metadata_url": f"{self.base}{METADATA_PATH}",
                "token_url": f"{self.base}{TOKEN_PATH}"}


def activity(activity_id: str, text: str, service_url: str, *,
             conversation: str = "a:1personal-chat", **extra: Any) -> dict[str, Any]:
    """A message activity as Teams posts it to the bot (a personal chat by default)."""
    return {"type": "message", "id": activity_id, "channelId": "msteams",
            "serviceUrl": service_url, "timestamp": "2024-05-01T10:00:00.000Z",
            "from": {"id": "29:user-ana", "name": "Ana", "aadObjectId": "user-ana"},
            "conversation": {"id": conversation, "conversationType": "personal",
                             "tenantId": "tenant-1"},
            "recipient": {"id": f"28:{APP_ID}", "name": "Banking"},
            "text": text, "textFormat": "plain", **extra}
