"""Bearer tokens of the API: created by ``kriptik token create USER``, stored only as a hash.

A token is ``kt_`` + 32 random bytes (URL-safe base64, 256 bits). The store keeps its
SHA-256 digest (``api_tokens.token_hash``, unique, indexed) and never the token.

Why a plain SHA-256 and not scrypt with a per-token salt: salts and slow hashes protect
*low-entropy* secrets (passwords) against precomputed tables and guessing. A 256-bit random
token cannot be guessed or tabled, so neither adds security — while a per-token salt would
forbid the indexed lookup: every request would have to scrypt the presented token against
every stored salt (tens of milliseconds each), turning authentication into the slowest part
of the API and a denial-of-service lever. A fast hash of a high-entropy token is what
GitHub and others do for API tokens; a leaked database still yields no usable token.
Comparison happens inside SQLite's unique-index lookup on the digest, not on the secret, so
there is no secret-dependent early exit to time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass

from coordinator.store.store import Store
from sandbox_agents.errors import InvalidInputError, KriptikError

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "kt_"
MAX_TOKEN_LEN = 256
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"


class UnauthorizedError(KriptikError, PermissionError):
    """No bearer token, or one that is unknown or revoked; a 401."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the token's user, and the token's id (the rate-limit key)."""

    user_id: str
    token_id: str


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token, as stored in ``api_tokens.token_hash``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, user_id: str) -> str:
    """Create a token for ``user_id``; only its hash is stored.

    Returns:
        The token itself, to be shown once.

    Raises:
        InvalidInputError: ``user_id`` is empty or has characters outside ``[A-Za-z0-9_.@-]``.
    """
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise InvalidInputError(f"invalid user id {user_id!r}: letters, digits and _.@- only", field="user_id")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.add_api_token(user_id, hash_token(token))
    return token


def authenticate(store: Store, token: str | None) -> Principal:
    """The principal of a presented token.

    Raises:
        UnauthorizedError: the token is missing, malformed, unknown or revoked.
    """
    if not token or len(token) > MAX_TOKEN_LEN or not token.startswith(TOKEN_PREFIX):
        raise UnauthorizedError("missing or malformed bearer token")
    row = store.find_api_token(hash_token(token))
    if row is None:
        raise UnauthorizedError("unknown or revoked token")
    return Principal(user_id=row.user_id, token_id=row.id)
