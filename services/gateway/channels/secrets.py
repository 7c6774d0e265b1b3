"""Channel secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with keys from
`BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY` (a Kubernetes Secret in production). Several keys,
comma-separated, allow rotation: the first encrypts, every one decrypts."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretsKeyInvalid(ValueError):
    pass


class SecretUnreadable(ValueError):
    """A stored secret none of the configured keys decrypts (the key was changed)."""


def parse_keys(raw: str) -> list[Fernet]:
    """The Fernet keys of a comma-separated setting; SecretsKeyInvalid names a bad one."""
    keys: list[Fernet] = []
    for index, part in enumerate(p.strip() for p in raw.split(",") if p.strip()):
        try:
            keys.append(Fernet(part.encode()))
        except (ValueError, TypeError) as exc:
            raise SecretsKeyInvalid(
                f"key {index + 1} is not a Fernet key (32 url-safe base64-encoded bytes; make "
                "one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')") from exc
    return keys


def new_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, raw_keys: str) -> None:
        keys = parse_keys(raw_keys)
        if not keys:
            raise SecretsKeyInvalid("no key given")
        self._fernet = MultiFernet(keys)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable("a channel secret cannot be decrypted with the configured "
                                   "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY (was the key "
                                   "replaced rather than rotated?)") from exc
