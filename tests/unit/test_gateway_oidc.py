"""Single sign-on (services/gateway/oidc.py) against a local OIDC issuer (tests/support/
oidc_issuer.py): bearer JWTs and the refusal matrix, key rotation, roles per tenant from the
claim and the permissions they open, the browser's authorization code + PKCE flow with the
session cookie, and the audit of what a person does."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest

from services.common.config import ConfigError
from services.common.openid import OpenIdKeys
from services.gateway.access import Permission
from services.gateway.config import load
from services.gateway.http.state import STATE
from services.gateway.oidc import OidcVerifier, claim_value, local_path, roles_of
from services.gateway.ports import Role
from tests.support.gateway import (
    PEPPER,
    VISITOR_SECRET,
    FakeClock,
    Gateway,
    auth,
    conv,
    make_config,
    problem_of,
    start_gateway,
)
from tests.support.memstores import MemoryAuditLog
from tests.support.oidc_issuer import CLIENT_ID, TestIssuer

INVALID = "missing or invalid API key"


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    running = await TestIssuer().start()
    yield running
    await running.close()


@pytest.fixture
async def gw(issuer: TestIssuer) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(make_config(oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID,
                                              oidc_clock_skew_s=60.0))
    gateway.owners.records.update({"alpha": "acme", "beta": "globex"})
    gateway.app[STATE].audit = MemoryAuditLog()
    yield gateway
    await gateway.client.close()


def roles(**tenants: list[str]) -> dict[str, Any]:
    return {"botfactory_roles": tenants}


# --- bearer tokens ----------------------------------------------------------------------------


async def test_a_persons_token_opens_what_their_roles_allow(gw: Gateway,
                                                            issuer: TestIssuer) -> None:
    viewer = issuer.token(**roles(acme=["viewer"]))
    models = "/v1/admin/bots/alpha/models"
    assert (await gw.client.get("/v1/admin/bots/alpha/owner", headers=auth(viewer))
            ).status == 200  # read
    response = await gw.client.put("/v1/admin/bots/alpha/model", headers=auth(viewer),
                                   json={"version": "v1"})
    assert "operate" in (await problem_of(response, 403))["detail"]
    operator = issuer.token(**roles(acme=["operator"]))
    response = await gw.client.put("/v1/admin/bots/alpha/model", headers=auth(operator),
                                   json={"version": "v1"})
    assert response.status == 200, await response.text()
    assert gw.models.active == {"alpha": "v1"}
    # the agent desk is the agent role's, not the operator's
    response = await gw.client.get(f"{conv()}/transcript", headers=auth(operator))
    await problem_of(response, 403)
    agent = issuer.token(**roles(acme=["agent"]))
    assert (await gw.client.get(f"{conv()}/transcript", headers=auth(agent))).status == 200
    await problem_of(await gw.client.get(models, headers=auth(agent)), 403)
    # keys: admins only, of their own tenant
    admin = issuer.token(**roles(acme=["admin"]))
    response = await gw.client.post("/v1/admin/keys", headers=auth(admin), json={
        "tenant": "acme", "bots": ["alpha"], "role": "client"})
    assert response.status == 201, await response.text()
    response = await gw.client.post("/v1/admin/keys", headers=auth(admin), json={
        "tenant": "globex", "bots": ["beta"], "role": "client"})
    await problem_of(response, 403)
    listed = await (await gw.client.get("/v1/admin/keys", headers=auth(admin))).json()
    assert {k["tenant"] for k in listed["keys"]} == {"acme"}


async def test_a_person_reaches_only_the_bots_of_their_tenants(gw: Gateway,
                                                               issuer: TestIssuer) -> None:
    token = issuer.token(**roles(acme=["admin"], initech=["viewer"]))
    gw.owners.records["gamma"] = "initech"
    assert (await gw.client.get("/v1/admin/bots/alpha/owner", headers=auth(token))
            ).status == 200
    assert (await gw.client.get("/v1/admin/bots/gamma/owner", headers=auth(token))
            ).status == 200
    response = await gw.client.put("/v1/admin/bots/gamma/model", headers=auth(token),
                                   json={"version": "v1"})  # a viewer in initech
    await problem_of(response, 403)
    for bot in ("beta", "nosuchbot"):
        response = await gw.client.get(f"/v1/admin/bots/{bot}/owner", headers=auth(token))
        assert (await problem_of(response, 404))["detail"] == f"no bot {bot!r} here"
    listed = await (await gw.client.get("/v1/admin/bots", headers=auth(token))).json()
    assert {b["bot_id"] for b in listed["bots"]} == {"alpha", "gamma"}
    everywhere = issuer.token(**roles(**{"*": ["viewer"]}))
    assert (await gw.client.get("/v1/admin/bots/beta/owner", headers=auth(everywhere))
            ).status == 200


async def test_bad_tokens_are_refused_with_the_one_401(gw: Gateway,
                                                       issuer: TestIssuer) -> None:
    good = issuer.token()
    url = "/v1/admin/bots/alpha/owner"
    assert (await gw.client.get(url, headers=auth(good))).status == 200
    now = int(time.time())
    bad = {
        "expired": issuer.token(exp=now - 120, iat=now - 600),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://evil.example.com"),
        "unknown kid": with_kid(issuer.token(), "nobody"),
        "no kid": with_kid(issuer.token(), None),
        "alg none": issuer.unsigned(),
        "HS256 with the public key": issuer.hs256_with_public_key(),
        "tampered payload": issuer.tampered(botfactory_roles={"globex": ["admin"]}),
        "signed by another key": issuer.foreign(),
        "not yet valid": issuer.token(nbf=now + 600),
        "no subject": issuer.token(sub=None),
        "no expiry": issuer.token(exp=None),
        "not a JWT": "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    }
    for reason, token in bad.items():
        response = await gw.client.get(url, headers=auth(token))
        assert (response.status, (await response.json())["detail"]) == (401, INVALID), reason
    assert gw.models.active == {}


def with_kid(token: str, kid: str | None) -> str:
    """`token` with its header's kid changed (None: left out); the signature no longer
    matters: the key lookup comes first."""
    header, rest = token.split(".", 1)
    fields = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    fields.pop("kid")
    if kid is not None:
        fields["kid"] = kid
    encoded = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    return f"{encoded}.{rest}"


async def test_small_clock_skew_is_allowed(gw: Gateway, issuer: TestIssuer) -> None:
    now = int(time.time())
    url = "/v1/admin/bots/alpha/owner"
    late = issuer.token(exp=now - 30, iat=now - 330)  # within the 60 s allowed
    assert (await gw.client.get(url, headers=auth(late))).status == 200
    early = issuer.token(iat=now + 30, nbf=now + 30)
    assert (await gw.client.get(url, headers=auth(early))).status == 200
    too_late = issuer.token(exp=now - 90, iat=now - 400)
    assert (await gw.client.get(url, headers=auth(too_late))).status == 401


async def test_keys_rotate_without_a_restart(gw: Gateway, issuer: TestIssuer) -> None:
    clock = FakeClock(100.0)
    verifier = gw.app[STATE].auth.people
    assert isinstance(verifier, OidcVerifier)
    verifier.keys = OpenIdKeys(refetch_s=30.0, clock=clock, name="test issuer")
    url = "/v1/admin/bots/alpha/owner"
    assert (await gw.client.get(url, headers=auth(issuer.token()))).status == 200
    fetched = issuer.jwks_fetches
    assert (await gw.client.get(url, headers=auth(issuer.token()))).status == 200
    assert issuer.jwks_fetches == fetched  # cached
    old = issuer.active
    new = issuer.rotate()
    # a new key id refetches the keys, at most once per OIDC_KEYS_REFETCH_S: a flood of
    # made-up key ids does not become a flood of requests to the issuer
    for n in range(5):
        response = await gw.client.get(url, headers=auth(with_kid(issuer.token(), f"x{n}")))
        assert response.status == 401
    assert (await gw.client.get(url, headers=auth(issuer.token(kid=new)))).status == 401
    assert issuer.jwks_fetches == fetched
    clock.now += 31
    assert (await gw.client.get(url, headers=auth(issuer.token(kid=new)))).status == 200
    assert issuer.jwks_fetches == fetched + 1
    assert (await gw.client.get(url, headers=auth(issuer.token(kid=old)))).status == 200
    # the issuer retires the old key: its tokens stop working once the keys are refetched
    del issuer.keys[old]
    clock.now += 31
    assert (await gw.client.get(url, headers=auth(with_kid(issuer.token(), "y")))
            ).status == 401  # (the unknown kid triggers the refetch)
    assert issuer.jwks_fetches == fetched + 2
    stale = jwt.encode(issuer.claims(), verifier_key(issuer, new), algorithm="RS256",
                       headers={"kid": old})
    assert (await gw.client.get(url, headers=auth(stale))).status == 401


def verifier_key(issuer: TestIssuer, kid: str) -> Any:
    return issuer.keys[kid]


def test_the_roles_claim_takes_both_shapes_and_ignores_the_rest() -> None:
    assert roles_of({"acme": ["editor", "agent"], "beta": "viewer"}) == {
        "acme": ["editor", "agent"], "beta": ["viewer"]}
    assert roles_of(["acme:editor", "*:viewer", "beta:owner", "bad tenant:admin", 7,
                     "noseparator"]) == {"acme": ["editor"], "*": ["viewer"]}
    assert roles_of("acme:admin beta:viewer") == {"acme": ["admin"], "beta": ["viewer"]}
    assert roles_of(None) == {} and roles_of({"acme": 5}) == {}
    claims = {"resource_access": {"botfactory": {"roles": ["acme:operator"]}},
              "https://example.com/roles": ["acme:viewer"]}
    assert claim_value(claims, "resource_access.botfactory.roles") == ["acme:operator"]
    assert claim_value(claims, "https://example.com/roles") == ["acme:viewer"]
    assert claim_value(claims, "resource_access.other.roles") is None


async def test_the_roles_claim_is_configurable(issuer: TestIssuer) -> None:
    gw = await start_gateway(make_config(
        oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID,
        oidc_roles_claim="resource_access.botfactory.roles"))
    try:
        gw.owners.records["alpha"] = "acme"
        token = issuer.token(botfactory_roles=None, resource_access={
            "botfactory": {"roles": ["acme:viewer"]}})
        assert (await gw.client.get("/v1/admin/bots/alpha/owner", headers=auth(token))
                ).status == 200
        ignored = issuer.token(resource_access=None)  # botfactory_roles is not the claim now
        await problem_of(await gw.client.get("/v1/admin/bots/alpha/owner",
                                             headers=auth(ignored)), 403)
    finally:
        await gw.client.close()


async def test_oidc_is_off_without_an_issuer(issuer: TestIssuer) -> None:
    gw = await start_gateway()
    try:
        gw.owners.records["alpha"] = "acme"
        response = await gw.client.get("/v1/admin/bots/alpha/owner",
                                       headers=auth(issuer.token()))
        assert response.status == 401
        assert (await gw.client.get("/auth/login", allow_redirects=False)).status == 404
    finally:
        await gw.client.close()


@pytest.mark.parametrize(("env", "variable"), [
    ({"OIDC_ISSUER": "http://idp.example.com"}, "OIDC_ISSUER"),
    ({"OIDC_ISSUER": "https://idp.example.com?x=1", "OIDC_CLIENT_ID": "g"}, "OIDC_ISSUER"),
    ({"OIDC_ISSUER": "https://idp.example.com"}, "OIDC_CLIENT_ID"),
    ({"OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "g",
      "OIDC_CLOCK_SKEW_S": "3600"}, "OIDC_CLOCK_SKEW_S"),
    ({"OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "g",
      "OIDC_ROLES_CLAIM": "a b"}, "OIDC_ROLES_CLAIM"),
    ({"OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "g",
      "OIDC_SCOPES": "email"}, "OIDC_SCOPES"),
    ({"OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "g",
      "OIDC_REDIRECT_URL": "https://gw.example.com/elsewhere"}, "OIDC_REDIRECT_URL"),
    ({"OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "g",
      "OIDC_SESSION_SECRET": "short"}, "OIDC_SESSION_SECRET"),
    ({"DEFAULT_TENANT": "not a tenant"}, "DEFAULT_TENANT"),
])
def test_bad_oidc_settings_fail_fast(env: dict[str, str], variable: str) -> None:
    base = {"BOTFACTORY_GATEWAY_API_KEY_PEPPER": PEPPER,
            "BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": VISITOR_SECRET}
    with pytest.raises(ConfigError, match=f"BOTFACTORY_GATEWAY_{variable}"):
        load({**base, **{f"BOTFACTORY_GATEWAY_{k}": v for k, v in env.items()}})
    good = load({**base, "BOTFACTORY_GATEWAY_OIDC_ISSUER": "https://idp.example.com/realms/x",
                 "BOTFACTORY_GATEWAY_OIDC_CLIENT_ID": "gateway"})
    assert good.oidc_enabled and not load(base).oidc_enabled


# --- browsers: authorization code + PKCE, the session cookie -----------------------------------


def set_cookies(response: Any) -> dict[str, Any]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return {name: morsel for name, morsel in jar.items()}


async def sign_in(gw: Gateway, issuer: TestIssuer, return_to: str = "/static/review.html"
                  ) -> tuple[str, dict[str, Any]]:
    """The whole flow over HTTP, as a browser follows it: the session cookie's value and
    what the issuer was asked."""
    login = await gw.client.get(f"/auth/login?return_to={return_to}", allow_redirects=False)
    assert login.status == 302
    flow_cookie = set_cookies(login)["bf_login"]
    assert flow_cookie["httponly"] and flow_cookie["secure"]
    assert flow_cookie["samesite"] == "Lax" and flow_cookie["path"] == "/auth"
    authorize = login.headers["Location"]
    asked = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    async with aiohttp.ClientSession() as browser, \
            browser.get(authorize, allow_redirects=False) as approved:
        assert approved.status == 302, await approved.text()
        back = approved.headers["Location"]
    callback = urlsplit(back)
    assert callback.path == "/auth/callback"
    done = await gw.client.get(f"/auth/callback?{callback.query}", allow_redirects=False,
                               headers={"Cookie": f"bf_login={flow_cookie.value}"})
    assert done.status == 303, await done.text()
    assert done.headers["Location"] == return_to
    session = set_cookies(done)["bf_session"]
    assert session["httponly"] and session["secure"] and session["samesite"] == "Strict"
    assert session["path"] == "/" and 0 < int(session["max-age"]) <= 3600
    return session.value, asked


async def test_the_code_flow_with_pkce_signs_a_person_in(gw: Gateway,
                                                         issuer: TestIssuer) -> None:
    cookie, asked = await sign_in(gw, issuer)
    assert asked["response_type"] == "code" and asked["client_id"] == CLIENT_ID
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["state"] and asked["nonce"] and "openid" in asked["scope"].split()
    exchange = issuer.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and 43 <= len(
        exchange["code_verifier"]) <= 128
    assert exchange["redirect_uri"] == asked["redirect_uri"]
    assert cookie not in ("", None) and "ada" not in cookie  # encrypted, not just signed
    headers = {"Cookie": f"bf_session={cookie}"}
    me = await (await gw.client.get("/auth/me", headers=headers)).json()
    assert me["subject"] == "user-ada" and me["email"] == "ada@example.com"
    assert me["roles"] == {"acme": ["admin"]}
    # the API and the pages' calls accept the cookie
    response = await gw.client.get("/v1/admin/bots/alpha/owner", headers=headers)
    assert response.status == 200, await response.text()
    assert (await gw.client.get("/v1/admin/bots/beta/owner", headers=headers)).status == 404
    # a change needs X-Requested-With (CSRF); a page of another site is refused
    put = {"version": "v2"}
    refused = await gw.client.put("/v1/admin/bots/alpha/model", headers=headers, json=put)
    assert "X-Requested-With" in (await problem_of(refused, 403))["detail"]
    cross = await gw.client.put("/v1/admin/bots/alpha/model", json=put, headers={
        **headers, "X-Requested-With": "fetch", "Origin": "https://evil.example.com"})
    await problem_of(cross, 403)
    ok = await gw.client.put("/v1/admin/bots/alpha/model", json=put, headers={
        **headers, "X-Requested-With": "fetch"})
    assert ok.status == 200, await ok.text()
    # ... and audits it with the person as the actor
    events = gw.app[STATE].audit.events  # type: ignore[union-attr]
    assert (events[-1].actor_key_id, events[-1].actor_email, events[-1].tenant) == (
        "user:user-ada", "ada@example.com", "acme")
    # logout ends the session and goes to the issuer's end-session endpoint
    out = await gw.client.get("/auth/logout", headers=headers, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"].startswith(f"{issuer.url}/logout?")
    assert set_cookies(out)["bf_session"].value == ""


async def test_the_code_flow_refuses_what_it_must(gw: Gateway, issuer: TestIssuer) -> None:
    login = await gw.client.get("/auth/login", allow_redirects=False)
    flow = set_cookies(login)["bf_login"].value
    async with aiohttp.ClientSession() as browser, \
            browser.get(login.headers["Location"], allow_redirects=False) as approved:
        query = urlsplit(approved.headers["Location"]).query
    code = parse_qs(query)["code"][0]
    state = parse_qs(query)["state"][0]
    cookie = {"Cookie": f"bf_login={flow}"}
    # no flow cookie (another browser), a wrong state, a login cookie forged
    for params, headers in ((query, {}), (f"code={code}&state=wrong", cookie),
                            (query, {"Cookie": "bf_login=forged"})):
        response = await gw.client.get(f"/auth/callback?{params}", headers=headers,
                                       allow_redirects=False)
        await problem_of(response, 400)
    # the code works once (a replay is refused by the issuer)
    first = await gw.client.get(f"/auth/callback?code={code}&state={state}", headers=cookie,
                                allow_redirects=False)
    assert first.status == 303
    again = await gw.client.get(f"/auth/callback?code={code}&state={state}", headers=cookie,
                                allow_redirects=False)
    await problem_of(again, 401)
    # the identity provider's refusal
    denied = await gw.client.get("/auth/callback?error=access_denied&state=x",
                                 allow_redirects=False)
    await problem_of(denied, 401)
    # a forged or foreign session cookie
    for value in ("forged", flow):
        response = await gw.client.get("/v1/admin/bots/alpha/owner",
                                       headers={"Cookie": f"bf_session={value}"})
        await problem_of(response, 401)


async def test_return_to_stays_on_this_gateway() -> None:
    assert local_path("/static/review.html?bot=x") == "/static/review.html?bot=x"
    for bad in ("https://evil.example.com/", "//evil.example.com", "/\\evil.example.com",
                "javascript:alert(1)", "", None, "/a b"):
        assert local_path(bad) == "/"


async def test_api_keys_keep_working_beside_people(gw: Gateway) -> None:
    key = await gw.key(Role.ADMIN, bots=("*",), tenant="acme")
    assert (await gw.client.get("/v1/admin/bots/alpha/owner", headers=auth(key))).status == 200
    assert (await gw.client.get("/v1/admin/bots/beta/owner", headers=auth(key))).status == 404


def test_key_roles_map_onto_permissions() -> None:
    from services.gateway.access import ROLE_PERMISSIONS

    assert ROLE_PERMISSIONS["publishable"] == {Permission.WIDGET}
    assert ROLE_PERMISSIONS["client"] == {Permission.WIDGET, Permission.CONVERSE}
    assert ROLE_PERMISSIONS["agent"] == {Permission.WIDGET, Permission.CONVERSE,
                                         Permission.AGENT}
    assert ROLE_PERMISSIONS["admin"] == set(Permission)
    assert ROLE_PERMISSIONS["viewer"] < ROLE_PERMISSIONS["editor"] < \
        ROLE_PERMISSIONS["operator"] < ROLE_PERMISSIONS["admin"]
    assert Permission.AGENT not in ROLE_PERMISSIONS["operator"]


# --- a new bot becomes its deployer's tenant's --------------------------------------------------


def bot_files(name: str) -> dict[str, Any]:
    return {"files": {"bot.yml": f'version: "1"\nname: {name}\n',
                      "data/nlu.yml": 'version: "1"\nintents:\n  - name: greet\n'
                                      '    examples: [hi, hello]\n'}}


async def test_a_new_bot_becomes_its_first_deployers_tenants(gw: Gateway,
                                                             issuer: TestIssuer) -> None:
    gw.hub.served = {"alpha", "beta", "legacy"}  # served bots exist; others do not yet
    acme = await gw.key(Role.ADMIN, bots=("*",), tenant="acme")
    globex = await gw.key(Role.ADMIN, bots=("*",), tenant="globex")
    url = "/v1/admin/bots/{bot}/definition"
    response = await gw.client.put(url.format(bot="fresh"), headers=auth(acme),
                                   json=bot_files("fresh"))
    assert response.status == 200, await response.text()
    assert gw.owners.records["fresh"] == "acme"
    # taken: owned by another tenant, or served without an owner record: the one 404
    for bot in ("fresh", "alpha", "legacy"):
        response = await gw.client.put(url.format(bot=bot), headers=auth(globex),
                                       json=bot_files(bot))
        assert (await problem_of(response, 404))["detail"] == f"no bot {bot!r} here"
    # a key cannot create a bot for another tenant, nor for `*`
    for tenant in ("acme", "*", "bad tenant"):
        response = await gw.client.put(f"{url.format(bot='other')}?tenant={tenant}",
                                       headers=auth(globex), json=bot_files("other"))
        await problem_of(response, 404)
    assert "other" not in gw.owners.records
    # a person with edit in two tenants names the one the bot is for
    person = issuer.token(**roles(acme=["editor"], initech=["editor"]))
    response = await gw.client.put(url.format(bot="multi"), headers=auth(person),
                                   json=bot_files("multi"))
    await problem_of(response, 404)
    response = await gw.client.put(f"{url.format(bot='multi')}?tenant=initech",
                                   headers=auth(person), json=bot_files("multi"))
    assert response.status == 200, await response.text()
    assert gw.owners.records["multi"] == "initech"
    # an owned bot keeps its owner: naming another is a conflict
    response = await gw.client.put(f"{url.format(bot='multi')}?tenant=acme",
                                   headers=auth(person), json=bot_files("multi"))
    await problem_of(response, 409)
    events = [e for e in gw.app[STATE].audit.events  # type: ignore[union-attr]
              if e.action == "bot.owner_set"]
    assert [(e.target["bot_id"], e.tenant) for e in events] == [("fresh", "acme"),
                                                               ("multi", "initech")]
