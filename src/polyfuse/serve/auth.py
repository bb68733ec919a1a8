"""API keys: read from a file or the environment, kept only as SHA-256 digests, compared in constant time.

A keys file holds one key per line, either the key itself or `sha256:<hex digest>` (so the file need not
hold secrets); blank lines and `#` comments are skipped. `POLYFUSE_API_KEYS` holds comma-separated keys
in the same forms. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from pathlib import Path

from polyfuse.data.errors import DataError, Problem

ENV_VAR = "POLYFUSE_API_KEYS"
_HEX_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
MIN_KEY_CHARS = 16


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_entry(entry: str, where: str) -> str:
    match = _HEX_DIGEST.match(entry.lower())
    if match:
        return match.group(1)
    if len(entry) < MIN_KEY_CHARS:
        raise DataError(
            [
                Problem(
                    f"an API key is shorter than {MIN_KEY_CHARS} characters",
                    file=where,
                    fix="use long random keys, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                )
            ]
        )
    return hash_key(entry)


def load_key_hashes(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """Digests of every key in `path` and in $POLYFUSE_API_KEYS."""
    environ = dict(os.environ) if environ is None else environ
    hashes: list[str] = []
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DataError(
                [Problem(f"cannot read the API keys file: {e.strerror}", file=str(path))]
            ) from None
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not entries:
            raise DataError([Problem("the API keys file holds no keys", file=str(path))])
        hashes += [_parse_entry(e, str(path)) for e in entries]
    for entry in environ.get(ENV_VAR, "").split(","):
        if entry.strip():
            hashes.append(_parse_entry(entry.strip(), f"${ENV_VAR}"))
    return sorted(set(hashes))


class KeyChecker:
    """Holds digests; `check` says whether a presented key is one of them."""

    def __init__(self, hashes: list[str]) -> None:
        self._digests = [bytes.fromhex(h) for h in hashes]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> bool:
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        # Compare with every digest, never stopping early, so timing says nothing about which matched.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key`; None when neither is sent."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # some other scheme (Basic, ...): a key was attempted but is not a valid one
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
