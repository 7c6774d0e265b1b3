"""Single sign-on for people (OpenID Connect): bearer JWTs for API calls, the authorization
code flow with PKCE for browsers (docs/security.md, "Single sign-on").

`OidcVerifier` checks a token with PyJWT against the issuer's signing keys (discovery and
JWKS through services/common/openid.py, shared with the Teams channel: cached, refetched on
an unknown `kid`, so the issuer can rotate keys): an asymmetric algorithm that matches the
key (never `none`, never HMAC), the signature, `iss`, `aud`, `exp` / `nbf` / `iat` within
the allowed clock skew, and a `sub`. Every refusal is the one `401 missing or invalid API
key` (the reason is logged, never the token).

Roles come from one claim (`BOTFACTORY_GATEWAY_OIDC_ROLES_CLAIM`, default
`botfactory_roles`; a dotted path reaches a nested claim, e.g. Keycloak's
`resource_access.botfactory.roles`), either an object `{"acme": ["editor"], "beta":
"viewer"}` or a list of `"tenant:role"` strings (`["acme:editor", "beta:viewer"]`); roles are
viewer, editor, operator, agent, admin (services/gateway/access.py), tenant `*` is every
tenant. Anything else in the claim is ignored.

`BrowserSessions` serves /auth/login, /auth/callback, /auth/logout and /auth/me: login
redirects to the issuer's authorization endpoint with PKCE (S256), `state` and `nonce` kept
in a short-lived encrypted cookie; the callback exchanges the code at the token endpoint,
verifies the ID token (and its nonce) and sets the session cookie `bf_session`: Fernet
(AES-CBC + HMAC) under a key derived from the configured secret, holding the subject,
e-mail, roles and expiry; `HttpOnly; Secure; SameSite=Strict`. The API and the web pages
accept it in place of a key; a request that changes something with it must also carry
`X-Requested-With` (a header no cross-site form can send) and, when it has an `Origin`, come
from this gateway's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.logging import get_logger
from services.common.openid import ASYMMETRIC, TIMEOUT, OpenIdKeys, safe_url
from services.gateway.access import ALL_TENANTS, HUMAN_ROLES, permissions_of
from services.gateway.auth import INVALID_KEY, TENANT_RE, Grants, Principal
from services.gateway.config import GatewayConfig

log = get_logger(__name__)

DISCOVERY = "/.well-known/openid-configuration"
SESSION_COOKIE = "bf_session"
LOGIN_COOKIE = "bf_login"
LOGIN_TTL_S = 600
SESSION_ENDED = "your session has ended: sign in again (/auth/login)"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-Requested-With"
MAX_RETURN_CHARS = 1000


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = ""
    audience: str = ""
    roles_claim: str = "botfactory_roles"
    clock_skew_s: float = 60.0
    scopes: str = "openid email profile"
    redirect_url: str = ""
    session_ttl_s: float = 3600.0
    keys_refetch_s: float = 30.0

    @classmethod
    def of(cls, config: GatewayConfig) -> OidcSettings:
        return cls(issuer=config.oidc_issuer, client_id=config.oidc_client_id,
                   client_secret=config.oidc_client_secret, audience=config.oidc_audience,
                   roles_claim=config.oidc_roles_claim, clock_skew_s=config.oidc_clock_skew_s,
                   scopes=config.oidc_scopes, redirect_url=config.oidc_redirect_url,
                   session_ttl_s=config.oidc_session_ttl_s,
                   keys_refetch_s=config.oidc_keys_refetch_s)

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY

    @property
    def api_audience(self) -> str:
        return self.audience or self.client_id


class TokenRefused(Unauthenticated):
    """A JWT that does not verify: the one 401 of every bad credential."""

    def __init__(self, reason: str) -> None:
        super().__init__(INVALID_KEY)
        self.reason = reason


class OidcVerifier:
    """People's JWTs of one issuer (see the module's docstring); owns its HTTP session."""

    def __init__(self, settings: OidcSettings, *, keys: OpenIdKeys | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = keys or OpenIdKeys(refetch_s=settings.keys_refetch_s, name="OIDC issuer")
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def metadata(self) -> dict[str, Any]:
        metadata = await self.keys.metadata(self.session, self.settings.metadata_url)
        if str(metadata.get("issuer", "")).rstrip("/") != self.settings.issuer.rstrip("/"):
            raise PermissionDenied("the OIDC discovery document names another issuer")
        return metadata

    async def principal(self, token: str) -> Principal:
        """The principal of a bearer token (an access or ID token for this audience)."""
        try:
            claims = await self.claims(token, audience=self.settings.api_audience)
        except TokenRefused as exc:
            log.warning("oidc_token_refused", reason=exc.reason)
            raise
        return person(claims, self.settings.roles_claim)

    async def claims(self, token: str, *, audience: str) -> dict[str, Any]:
        """The token's claims once it verifies; TokenRefused otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused("not a JWT") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ASYMMETRIC:
            raise TokenRefused(f"algorithm {algorithm!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("no key id (kid)")
        key = await self.keys.find(self.session, self.settings.metadata_url, kid)
        if key is None:
            raise TokenRefused("unknown key id")
        if key.algorithm != algorithm:
            raise TokenRefused(f"algorithm {algorithm!r} is not the key's")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[key.algorithm], audience=audience,
                issuer=self.settings.issuer, leeway=self.settings.clock_skew_s,
                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefused("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefused("wrong issuer") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"invalid: {exc}") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRefused("no subject")
        return claims


def claim_value(claims: dict[str, Any], path: str) -> Any:
    """The claim `path`: a top-level claim of that name (names may hold dots: URLs), else the
    dotted path through nested objects."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def roles_of(value: Any) -> dict[str, list[str]]:
    """A roles claim as tenant → roles (see the module's docstring; the rest is ignored)."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for tenant, roles in value.items():
            for role in [roles] if isinstance(roles, str) else roles if isinstance(
                    roles, list) else []:
                pairs.append((str(tenant), str(role)))
    elif isinstance(value, (list, str)):
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        for item in items:
            if isinstance(item, str) and ":" in item:
                tenant, _, role = item.rpartition(":")
                pairs.append((tenant, role))
    found: dict[str, list[str]] = {}
    for tenant, role in pairs:
        if (tenant == ALL_TENANTS or TENANT_RE.match(tenant)) and role in HUMAN_ROLES:
            found.setdefault(tenant, [])
            if role not in found[tenant]:
                found[tenant].append(role)
    return found


def grants_of(roles: dict[str, list[str]]) -> Grants:
    return tuple((tenant, permissions_of(tuple(names))) for tenant, names in
                 sorted(roles.items()))


def person(claims: dict[str, Any], roles_claim: str,
           roles: dict[str, list[str]] | None = None) -> Principal:
    if roles is None:
        roles = roles_of(claim_value(claims, roles_claim))
    email = claims.get("email")
    return Principal.person(str(claims["sub"]), grants_of(roles),
                            email if isinstance(email, str) and email else None)


# --- browsers ---------------------------------------------------------------------------------


def fernet_key(secret: str, purpose: bytes = b"botfactory oidc session v1") -> bytes:
    return base64.urlsafe_b64encode(hmac.new(secret.encode(), purpose, hashlib.sha256).digest())


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge) of RFC 7636, method S256."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def local_path(value: str | None) -> str:
    """Where to go after signing in: a path of this gateway only (no open redirect)."""
    if not value or len(value) > MAX_RETURN_CHARS or not value.startswith("/") \
            or value.startswith("//") or "\\" in value or any(c.isspace() for c in value):
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


class BrowserSessions:
    """Sign-in for browsers and the session cookie (see the module's docstring)."""

    def __init__(self, verifier: OidcVerifier, secret: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.settings = verifier.settings
        self._fernet = Fernet(fernet_key(secret))
        self._clock = clock

    # -- the session cookie, on every request that carries it --------------------------------

    @staticmethod
    def present(request: web.Request) -> bool:
        return SESSION_COOKIE in request.cookies

    async def principal(self, request: web.Request, client: str | None = None) -> Principal:
        """The person of the request's session cookie; 401 when it is not (or no longer)
        valid, 403 for a change without X-Requested-With or from another origin (CSRF)."""
        data = self._open(request.cookies.get(SESSION_COOKIE, ""),
                          int(self.settings.session_ttl_s))
        if data is None or not isinstance(data.get("sub"), str) or \
                float(data.get("exp", 0)) <= self._clock():
            raise Unauthenticated(SESSION_ENDED)
        check_same_origin(request)
        roles = data.get("roles") if isinstance(data.get("roles"), dict) else {}
        return Principal.person(data["sub"], grants_of(roles_of(roles)),
                                data.get("email") or None)

    def _seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()

    def _open(self, value: str, ttl_s: int) -> dict[str, Any] | None:
        try:
            data = json.loads(self._fernet.decrypt(value.encode(), ttl=ttl_s))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- the routes ----------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        app.router.add_get("/auth/login", self.login, name="auth_login")
        app.router.add_get("/auth/callback", self.callback, name="auth_callback")
        app.router.add_route("*", "/auth/logout", self.logout, name="auth_logout")
        app.router.add_get("/auth/me", self.me, name="auth_me")

    def redirect_uri(self, request: web.Request) -> str:
        return self.settings.redirect_url or f"{request.scheme}://{request.host}/auth/callback"

    async def login(self, request: web.Request) -> web.Response:
        metadata = await self.verifier.metadata()
        endpoint = metadata.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise PermissionDenied("the OIDC issuer names no authorization endpoint")
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        redirect_uri = self.redirect_uri(request)
        flow = {"state": state, "nonce": nonce, "verifier": verifier,
                "return_to": local_path(request.query.get("return_to")),
                "redirect_uri": redirect_uri}
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "redirect_uri": redirect_uri, "scope": self.settings.scopes,
                           "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        joiner = "&" if "?" in endpoint else "?"
        response = web.Response(status=302, headers={"Location": f"{endpoint}{joiner}{query}",
                                                     "Cache-Control": "no-store"})
        response.set_cookie(LOGIN_COOKIE, self._seal(flow), max_age=LOGIN_TTL_S, path="/auth",
                            secure=True, httponly=True, samesite="Lax")
        return response

    async def callback(self, request: web.Request) -> web.Response:
        if "error" in request.query:
            raise Unauthenticated("the identity provider refused the sign-in: "
                                  f"{request.query['error'][:100]}")
        flow = self._open(request.cookies.get(LOGIN_COOKIE, ""), LOGIN_TTL_S)
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if flow is None:
            raise InvalidArgument("no sign-in in progress here (or it took over 10 minutes): "
                                  "start again at /auth/login")
        if not state or not hmac.compare_digest(state, str(flow.get("state", ""))):
            raise InvalidArgument("the sign-in's state does not match: start again at "
                                  "/auth/login")
        if not code:
            raise InvalidArgument("the identity provider sent no code")
        tokens = await self._exchange(code, flow)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthenticated("the identity provider returned no ID token")
        try:
            claims = await self.verifier.claims(id_token, audience=self.settings.client_id)
        except TokenRefused as exc:
            log.warning("oidc_id_token_refused", reason=exc.reason)
            raise
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(flow.get("nonce"))):
            log.warning("oidc_id_token_refused", reason="nonce")
            raise Unauthenticated(INVALID_KEY)
        roles = await self._roles(claims, tokens)
        expires = self._clock() + self.settings.session_ttl_s
        session = {"sub": claims["sub"], "email": claims.get("email"), "roles": roles,
                   "exp": expires}
        log.info("oidc_signed_in", subject=claims["sub"],
                 tenants=sorted(roles), expires_unix_s=int(expires))
        response = web.Response(status=303, headers={
            "Location": local_path(str(flow.get("return_to"))), "Cache-Control": "no-store"})
        response.set_cookie(SESSION_COOKIE, self._seal(session),
                            max_age=int(self.settings.session_ttl_s), path="/", secure=True,
                            httponly=True, samesite="Strict")
        response.del_cookie(LOGIN_COOKIE, path="/auth")
        return response

    async def _exchange(self, code: str, flow: dict[str, Any]) -> dict[str, Any]:
        """The token endpoint's answer to the code (with the PKCE verifier)."""
        metadata = await self.verifier.metadata()
        endpoint = metadata.get("token_endpoint")
        if not isinstance(endpoint, str) or not safe_url(endpoint):
            raise PermissionDenied("the OIDC issuer names no usable token endpoint")
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": str(flow["redirect_uri"]),
                "code_verifier": str(flow["verifier"]), "client_id": self.settings.client_id}
        auth = None
        if self.settings.client_secret:
            auth = aiohttp.BasicAuth(self.settings.client_id, self.settings.client_secret)
        try:
            async with self.verifier.session.post(endpoint, data=form, auth=auth,
                                                  timeout=TIMEOUT) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("oidc_token_exchange_failed", error=str(exc))
            raise Unauthenticated("the identity provider could not be reached to finish the "
                                  "sign-in: try again") from exc
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            log.warning("oidc_token_exchange_refused", status=status, error=error)
            raise Unauthenticated("the identity provider refused the sign-in's code: start "
                                  "again at /auth/login")
        return body

    async def _roles(self, claims: dict[str, Any],
                     tokens: dict[str, Any]) -> dict[str, list[str]]:
        """The roles claim of the ID token, else of the access token (when it is a JWT of
        this issuer for this gateway: Keycloak puts client roles there)."""
        value = claim_value(claims, self.settings.roles_claim)
        access = tokens.get("access_token")
        if value is None and isinstance(access, str):
            try:
                value = claim_value(await self.verifier.claims(
                    access, audience=self.settings.api_audience), self.settings.roles_claim)
            except TokenRefused:
                value = None
        return roles_of(value)

    async def logout(self, request: web.Request) -> web.Response:
        """End the session; then the issuer's end-session endpoint when it has one."""
        location = "/"
        try:
            metadata = await self.verifier.metadata()
        except Exception:  # signing out here must work while the issuer is away
            metadata = {}
        end = metadata.get("end_session_endpoint")
        if isinstance(end, str) and end.startswith(("https://", "http://")):
            back = f"{request.scheme}://{request.host}/"
            query = urlencode({"client_id": self.settings.client_id,
                               "post_logout_redirect_uri": back})
            location = f"{end}{'&' if '?' in end else '?'}{query}"
        response = web.Response(status=303, headers={"Location": location,
                                                     "Cache-Control": "no-store"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        """Who the session cookie is: subject, e-mail, roles, until when."""
        principal = await self.principal(request) if self.present(request) else None
        if principal is None:
            raise Unauthenticated(SESSION_ENDED)
        data = self._open(request.cookies.get(SESSION_COOKIE, ""),
                          int(self.settings.session_ttl_s)) or {}
        return web.json_response({"subject": principal.key_id.removeprefix("user:"),
                                  "email": principal.email,
                                  "roles": roles_of(data.get("roles") or {}),
                                  "expires_at_unix_s": int(float(data.get("exp", 0)))},
                                 headers={"Cache-Control": "no-store"})


def check_same_origin(request: web.Request) -> None:
    """CSRF: a request with the session cookie must come from this gateway's own pages
    (`Sec-Fetch-Site`, or else the `Origin`'s host), and a change must also carry
    X-Requested-With (no cross-site form can send it)."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None:
        cross = site not in ("same-origin", "none")
    else:
        cross = origin is not None and urlsplit(origin).netloc != request.host
    if cross:
        raise PermissionDenied("a session cookie is only accepted from this gateway's pages")
    if request.method not in SAFE_METHODS and CSRF_HEADER not in request.headers:
        raise PermissionDenied(f"a change with a session cookie needs the {CSRF_HEADER} "
                               "header (the gateway's pages send it)")
