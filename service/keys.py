"""API keys: who may call the service.

Keys come from FACECHECK_API_KEYS (comma-separated) and FACECHECK_API_KEYS_FILE (one a line, `#` starts
a comment). An entry is a key, or `sha256:` followed by the hex SHA-256 of one, so that neither the
environment nor the file need hold the keys themselves. Only hashes are kept; a presented key is hashed
and compared with every stored hash in constant time. Logs and metrics know a key by nothing, and the
rate limit by the first 12 hex digits of its hash.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from service.config import Settings

HASH_PREFIX = "sha256:"


class KeysError(ValueError):
    """The keys cannot be read; the message never holds a key."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(entries: Iterable[str], where: str) -> set[bytes]:
    """SHA-256 digests of the entries (keys, or sha256:HEX), blank lines and # comments skipped."""
    hashes: set[bytes] = set()
    for number, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.lower().startswith(HASH_PREFIX):
            hexdigest = entry[len(HASH_PREFIX):]
            if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
                raise KeysError(f"{where}, entry {number}: after 'sha256:' come the 64 hex digits of a key's SHA-256")
            hashes.add(bytes.fromhex(hexdigest))
        else:
            hashes.add(digest(entry))
    return hashes


@dataclass(frozen=True)
class ApiKeys:
    hashes: frozenset[bytes] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """Raises KeysError for an unreadable keys file, a malformed hash, or a keys file that holds no key."""
        hashes: set[bytes] = set()
        if settings.api_keys is not None:
            hashes |= parse_keys(settings.api_keys.get_secret_value().split(","), "FACECHECK_API_KEYS")
        if settings.api_keys_file is not None:
            try:
                lines = settings.api_keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeysError(f"FACECHECK_API_KEYS_FILE: cannot read {settings.api_keys_file}: {exc}") from None
            from_file = parse_keys(lines, f"FACECHECK_API_KEYS_FILE {settings.api_keys_file}, line")
            if not from_file:
                raise KeysError(f"FACECHECK_API_KEYS_FILE {settings.api_keys_file} holds no key: the service would be open to anyone")
            hashes |= from_file
        return cls(frozenset(hashes))

    @property
    def required(self) -> bool:
        return bool(self.hashes)

    def identify(self, presented: str | None) -> str | None:
        """The key's id (the first 12 hex digits of its hash) when it is one of ours, else None."""
        if presented is None:
            return None
        wanted = digest(presented)
        found = None
        for stored in self.hashes:  # every hash compared, in constant time: no early exit
            if hmac.compare_digest(stored, wanted):
                found = stored
        return None if found is None else found.hex()[:12]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def warn_if_exposed(keys: ApiKeys, log: logging.Logger) -> None:
    """In the `bentoml serve` process (not its workers): a warning when it listens beyond loopback without keys."""
    host = serving_host()
    if host is None or keys.required or is_loopback(host):
        return
    log.warning("facecheck listens on %s without API keys: anyone who can reach this port may classify photos, read folders under "
                "FACECHECK_DATA_ROOT and write sorted copies. Set FACECHECK_API_KEYS or FACECHECK_API_KEYS_FILE, or listen on 127.0.0.1.",
                host)


def serving_host() -> str | None:
    """The host `bentoml serve` binds, when this process is running that command; None elsewhere (its workers, tests)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or "host" not in context.params:
        return None
    from bentoml._internal.configuration.containers import BentoMLContainer

    return context.params["host"] or BentoMLContainer.http.host.get()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
