"""The client's local store: one SQLite file in the client's directory.

It holds the device's private keys (X3DH state), its ratchet sessions, the ephemeral keys of
sessions already started (replay protection), sent requests (so a retry resends the very
same ciphertext) and decrypted messages not yet acknowledged (so a redelivery after a crash
is not mistaken for a replay). The file is private to the device: it is created 0600.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    peer TEXT NOT NULL, peer_device TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (peer, peer_device));
CREATE TABLE IF NOT EXISTS seen_ephemeral_keys (key BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS outgoing (
    request_id TEXT PRIMARY KEY, request BLOB NOT NULL, create_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS received (
    message_id TEXT PRIMARY KEY, plaintext BLOB NOT NULL, create_time REAL NOT NULL);
"""

# Sent requests kept for retries; older ones are dropped.
OUTGOING_KEPT = 1000


@dataclass
class SessionRecord:
    ratchet: dict[str, Any]  # doubleratchet's JSON state
    associated_data: bytes
    ephemeral_key: bytes  # the X3DH ephemeral key that started the session
    peer_identity_key: bytes
    # The X3DH header, sent with every envelope until the peer answers (we initiated).
    pending_x3dh: dict[str, str | None] | None
    # The peer's ratchet keys seen so far (newest last): an envelope on one of them that fails
    # to decrypt is an old one played again, not a new one.
    peer_ratchet_keys: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ratchet": self.ratchet,
                "associated_data": self.associated_data.hex(),
                "ephemeral_key": self.ephemeral_key.hex(),
                "peer_identity_key": self.peer_identity_key.hex(),
                "pending_x3dh": self.pending_x3dh,
                "peer_ratchet_keys": self.peer_ratchet_keys,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        d = json.loads(text)
        return cls(
            ratchet=d["ratchet"],
            associated_data=bytes.fromhex(d["associated_data"]),
            ephemeral_key=bytes.fromhex(d["ephemeral_key"]),
            peer_identity_key=bytes.fromhex(d["peer_identity_key"]),
            pending_x3dh=d["pending_x3dh"],
            peer_ratchet_keys=d.get("peer_ratchet_keys", []),
        )


class LocalStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "bizmsg-sdk.sqlite3"
        fresh = not self.path.exists()
        # The SDK is used from one thread at a time; the connection may be handed between them.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Groups writes so that a crash keeps all or none of them."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_meta(self, key: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def get_session(self, peer: str, peer_device: str) -> SessionRecord | None:
        row = self.conn.execute(
            "SELECT record FROM sessions WHERE peer = ? AND peer_device = ?", (peer, peer_device)
        ).fetchone()
        return None if row is None else SessionRecord.from_json(row[0])

    def session_devices(self, peer: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT peer_device FROM sessions WHERE peer = ? ORDER BY peer_device", (peer,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def put_session(self, peer: str, peer_device: str, record: SessionRecord) -> None:
        self.conn.execute(
            "INSERT INTO sessions (peer, peer_device, record) VALUES (?, ?, ?) "
            "ON CONFLICT (peer, peer_device) DO UPDATE SET record = excluded.record",
            (peer, peer_device, record.to_json()),
        )

    def ephemeral_key_seen(self, key: bytes) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM seen_ephemeral_keys WHERE key = ?", (key,)
        ).fetchone()
        return row is not None

    def add_ephemeral_key(self, key: bytes) -> None:
        self.conn.execute("INSERT OR IGNORE INTO seen_ephemeral_keys (key) VALUES (?)", (key,))

    def get_outgoing(self, request_id: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT request FROM outgoing WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_outgoing(self, request_id: str, request: bytes) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO outgoing (request_id, request, create_time) VALUES (?, ?, ?)",
            (request_id, request, time.time()),
        )
        self.conn.execute(
            "DELETE FROM outgoing WHERE request_id NOT IN "
            "(SELECT request_id FROM outgoing ORDER BY create_time DESC LIMIT ?)",
            (OUTGOING_KEPT,),
        )

    def get_received(self, message_id: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT plaintext FROM received WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_received(self, message_id: str, plaintext: bytes) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO received (message_id, plaintext, create_time) VALUES (?, ?, ?)",
            (message_id, plaintext, time.time()),
        )

    def forget_received(self, message_ids: list[str]) -> None:
        self.conn.executemany(
            "DELETE FROM received WHERE message_id = ?", [(m,) for m in message_ids]
        )
