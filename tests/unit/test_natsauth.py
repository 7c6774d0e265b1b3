"""The NATS identities (services/common/natsauth.py): the Kubernetes configs are generated from
them and service URLs are derived correctly (tests/integration/test_nats_auth.py: the local
config is one nats-server accepts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from botfactory.local.natsconf import derive_password, service_url, with_user
from services.common.natsauth import (
    ADMIN,
    IDENTITIES,
    SERVICE_USERS,
    authorization_block,
    generated_part,
    identity,
    literal_password,
)

ROOT = Path(__file__).resolve().parents[2]
K8S_CONFS = (ROOT / "deploy" / "k8s" / "base" / "nats" / "nats.conf",
             ROOT / "deploy" / "k8s" / "overlays" / "dev" / "nats-standalone.conf")


@pytest.mark.parametrize("conf", K8S_CONFS, ids=lambda p: p.name)
def test_kubernetes_configs_hold_the_generated_users(conf: Path) -> None:
    assert generated_part(conf.read_text(encoding="utf-8")) == authorization_block(), (
        f"{conf} is out of date: python -m services.common.natsauth {conf}")


def test_every_service_is_restricted_and_only_admin_is_not() -> None:
    assert set(SERVICE_USERS) == {"gateway", "dialogue", "nlu", "rpa-runner", "trainer"}
    for ident in IDENTITIES:
        restricted = ident.publish is not None and ident.subscribe is not None
        assert restricted == (ident.user != ADMIN), ident.user
    gateway = identity("gateway")
    assert gateway.publish is not None and "conv.in.>" in gateway.publish
    assert not any(s.startswith("conv.out") for s in gateway.publish)
    # Metadata of every asset (STREAM.INFO, for `provision`), but no run state.
    assert not any("rpa_runs" in s for s in gateway.publish if ".STREAM.INFO." not in s)
    nlu = identity("nlu")
    assert nlu.publish is not None and not any(s.startswith("conv.") for s in nlu.publish)
    assert not any("STREAM.CREATE" in s or "STREAM.UPDATE" in s
                   for i in IDENTITIES if i.publish for s in i.publish)
    with pytest.raises(KeyError, match="no NATS identity"):
        identity("intruder")


def test_service_urls_carry_derived_passwords() -> None:
    admin = "nats://admin:s3cret-admin-password@127.0.0.1:4222,nats://admin:s3cret-admin-password@h2:4222"
    url = service_url(admin, "gateway")
    password = derive_password("s3cret-admin-password", "gateway")
    assert url == f"nats://gateway:{password}@127.0.0.1:4222,nats://gateway:{password}@h2:4222"
    assert password != derive_password("s3cret-admin-password", "dialogue")
    assert service_url("nats://127.0.0.1:4222", "gateway") == "nats://127.0.0.1:4222"
    assert service_url(admin, ADMIN) == admin
    assert with_user("tls://x:y@h:1", "nlu", "pw") == "tls://nlu:pw@h:1"


def test_passwords_must_be_url_safe() -> None:
    assert literal_password("abcdef0123456789") == '"abcdef0123456789"'
    for bad in ("short", "has space in it 123", 'quote"quote"quote"', "x" * 200):
        with pytest.raises(ValueError, match="NATS password"):
            literal_password(bad)
