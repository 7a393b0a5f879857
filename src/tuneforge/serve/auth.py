"""API keys: `Authorization: Bearer KEY`, as the OpenAI client sends it.

Only sha256 digests are held (see serve.config). A presented key is hashed and compared with
`hmac.compare_digest` against every stored digest, without stopping at a match, so the time
taken says nothing about which key, or how much of one, was right. With no API keys configured
the generation routes are open (a loopback-only default); admin routes always need the admin
key, and are off when none is set. The admin key may also call every model.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from tuneforge.serve.config import ApiKey
from tuneforge.serve.errors import ApiError, bad_key


@dataclass(frozen=True)
class Caller:
    models: frozenset[str] | None  # None: every model
    admin: bool = False

    def may_use(self, name: str) -> bool:
        return self.models is None or name in self.models


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _matches(token: str, digest: str) -> bool:
    presented = hashlib.sha256(token.encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented.encode(), digest.encode())


class Keys:
    def __init__(self, api_keys: list[ApiKey], admin_sha256: str | None):
        self.api_keys = list(api_keys)
        self.admin_sha256 = admin_sha256

    @property
    def open(self) -> bool:
        return not self.api_keys

    def caller(self, authorization: str | None) -> Caller:
        """Who is calling a generation route; 401 for a missing or wrong key."""
        token = _bearer(authorization)
        if token is not None and self.admin_sha256 and _matches(token, self.admin_sha256):
            return Caller(None, admin=True)
        if self.open:
            return Caller(None)
        if token is None:
            raise bad_key()
        found: ApiKey | None = None
        for key in self.api_keys:  # every digest is compared: no early exit on a match
            if _matches(token, key.sha256) and found is None:
                found = key
        if found is None:
            raise bad_key()
        return Caller(None if found.models is None else frozenset(found.models))

    def require_admin(self, authorization: str | None) -> None:
        if not self.admin_sha256:
            raise ApiError(403, "Admin routes are off: start the server with --admin-key (or admin_key_sha256 "
                           "in its config).", code="admin_disabled")
        token = _bearer(authorization)
        if token is None or not _matches(token, self.admin_sha256):
            raise bad_key()
