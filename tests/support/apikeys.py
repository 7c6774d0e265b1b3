"""API key records for the gateway's key tests (tests/unit/test_gateway_auth.py,
tests/integration/test_gateway_keystores.py)."""

from __future__ import annotations

from services.gateway.auth import hash_secret
from services.gateway.ports import ApiKeyRecord, Role

PEPPER = "pepper-0123456789abcdef"


def record(key_id: str = "a1", tenant: str = "t1", bots: tuple[str, ...] = ("alpha",),
           role: Role = Role.CLIENT, created: int = 1) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=key_id, key_hash=hash_secret(PEPPER, f"token-{key_id}"),
                        tenant=tenant, bots=bots, role=role, created_at_unix_ms=created)
