"""App secrets: a tenant's named values, encrypted at rest, given to its runners' environment only.

A tenant sets ``NAME`` (``klieg secrets set NAME``, the value from stdin); an app declares the
names it needs (``App(..., secrets=["HF_TOKEN"])``, only names reach its revision); a worker
starting a runner of that app reads the owner's sealed values from the registry, opens them and
puts them in the runner's environment. The value is never in a revision, a log line, a status,
an error or an API answer: the API shows names and when they were set.

Values are sealed with Fernet (AES-128-CBC and HMAC-SHA256, ``cryptography``) under the
platform's secrets key: ``KLIEG_SECRETS_KEY`` in a fleet, else ``$KLIEG_HOME/secrets-key``
(made once by ``klieg up``). A platform without one refuses to store secrets.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from klieg.exceptions import InvalidRequestError, UnavailableError
from klieg.types import secret_name_problem

MAX_VALUE_BYTES = 64 * 1024


def check_name(name: str) -> str:
    """``name`` if it may name a secret; otherwise ``InvalidRequestError``."""
    if (problem := secret_name_problem(name)) is not None:
        raise InvalidRequestError(problem)
    return name


class Vault:
    def __init__(self, key: str) -> None:
        if not key:
            raise UnavailableError(
                "this platform has no secrets key: set KLIEG_SECRETS_KEY (klieg up makes one)"
            )
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as exc:
            raise UnavailableError(
                "the secrets key is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from exc

    def seal(self, value: str) -> str:
        data = value.encode()
        if len(data) > MAX_VALUE_BYTES:
            raise InvalidRequestError(f"a secret holds at most {MAX_VALUE_BYTES} bytes")
        return self._fernet.encrypt(data).decode()

    def open(self, name: str, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise UnavailableError(
                f"secret {name} does not open with this platform's secrets key"
            ) from None


def ensure_key(home: Path) -> str:
    """The secrets key of ``home`` (``secrets-key``), made on first use."""
    path = home / "secrets-key"
    if not path.exists():
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()
