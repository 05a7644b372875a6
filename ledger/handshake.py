"""Mutual authentication at the start of every shard-protocol connection.

Both ends hold the cluster secret (QUICKPAY_CLUSTER_SECRET). Before any frame:

    server -> client   MAGIC | server_nonce                         (8 + 32 bytes)
    client -> server   MAGIC | client_nonce | HMAC(secret, "client" | server_nonce | client_nonce)
    server -> client   HMAC(secret, "server" | server_nonce | client_nonce)   (32 bytes)

HMAC is HMAC-SHA256, compared with `hmac.compare_digest`. Fresh random nonces on both
sides make every proof single-use, and the role labels stop a proof from being
reflected back. The server decodes nothing else until the client's proof checks out: a
peer that sends anything but the magic is cut off at its first byte, and one that does
not finish within HANDSHAKE_TIMEOUT_S is disconnected. The client sends no request
until the server has proven it holds the secret too.

This authenticates the connection's peers; it does not encrypt or sign the frames
that follow, so the shard network must still not be shared with untrusted hosts on
the path (a private docker network, loopback, or unix sockets in a 0700 directory).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

__all__ = [
    "ENV_CLUSTER_SECRET",
    "HANDSHAKE_TIMEOUT_S",
    "ClientHandshake",
    "HandshakeError",
    "ServerHandshake",
    "Step",
    "cluster_secret",
]

ENV_CLUSTER_SECRET = "QUICKPAY_CLUSTER_SECRET"
HANDSHAKE_TIMEOUT_S = 5.0
MAGIC = b"QPSHRD\x00\x01"
NONCE_BYTES = 32
MAC_BYTES = 32
SERVER_HELLO_BYTES = len(MAGIC) + NONCE_BYTES
CLIENT_PROOF_BYTES = len(MAGIC) + NONCE_BYTES + MAC_BYTES
SERVER_PROOF_BYTES = MAC_BYTES
_CONTEXT = b"quickpay shard protocol v1|"


class HandshakeError(Exception):
    """The peer is not a quickpay shard-protocol peer holding the cluster secret."""


def cluster_secret(value: bytes | str | None = None) -> bytes:
    """`value`, else QUICKPAY_CLUSTER_SECRET; HandshakeError if there is neither."""
    if value is None:
        value = os.environ.get(ENV_CLUSTER_SECRET)
    if not value:
        raise HandshakeError(
            f"no cluster secret: set {ENV_CLUSTER_SECRET} (`quickpay secrets` makes one; "
            "`quickpay up` keeps one in its state directory)"
        )
    return value.encode() if isinstance(value, str) else bytes(value)


def _mac(secret: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + role + b"|" + server_nonce + client_nonce, hashlib.sha256).digest()


@dataclass(slots=True)
class Step:
    send: bytes = b""  # bytes to write to the peer now
    done: bool = False  # authenticated; `leftover` belongs to the framed protocol
    leftover: bytes = b""


class ServerHandshake:
    """The shard worker's side. Write `hello()` on connect, then `feed` what arrives."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._server_nonce = secrets.token_bytes(NONCE_BYTES)
        self._buffer = b""

    def hello(self) -> bytes:
        return MAGIC + self._server_nonce

    def feed(self, data: bytes) -> Step:
        self._buffer += data
        head = self._buffer[: len(MAGIC)]
        if head != MAGIC[: len(head)]:
            raise HandshakeError("the peer did not start the shard-protocol handshake")
        if len(self._buffer) < CLIENT_PROOF_BYTES:
            return Step()
        client_nonce = self._buffer[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        proof = self._buffer[len(MAGIC) + NONCE_BYTES : CLIENT_PROOF_BYTES]
        if not hmac.compare_digest(proof, _mac(self._secret, b"client", self._server_nonce, client_nonce)):
            raise HandshakeError("the peer's proof does not match the cluster secret")
        leftover = self._buffer[CLIENT_PROOF_BYTES:]
        self._buffer = b""
        return Step(send=_mac(self._secret, b"server", self._server_nonce, client_nonce), done=True, leftover=leftover)


class ClientHandshake:
    """The connecting side (gateway, relay, tools). `feed` what the server sends."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._client_nonce = secrets.token_bytes(NONCE_BYTES)
        self._server_nonce: bytes | None = None
        self._buffer = b""

    def feed(self, data: bytes) -> Step:
        self._buffer += data
        if self._server_nonce is None:
            head = self._buffer[: len(MAGIC)]
            if head != MAGIC[: len(head)]:
                raise HandshakeError("the server did not start the shard-protocol handshake")
            if len(self._buffer) < SERVER_HELLO_BYTES:
                return Step()
            self._server_nonce = self._buffer[len(MAGIC) : SERVER_HELLO_BYTES]
            self._buffer = self._buffer[SERVER_HELLO_BYTES:]
            send = MAGIC + self._client_nonce + _mac(self._secret, b"client", self._server_nonce, self._client_nonce)
            step = self._check_server_proof()
            step.send = send
            return step
        return self._check_server_proof()

    def _check_server_proof(self) -> Step:
        assert self._server_nonce is not None
        if len(self._buffer) < SERVER_PROOF_BYTES:
            return Step()
        proof = self._buffer[:SERVER_PROOF_BYTES]
        if not hmac.compare_digest(proof, _mac(self._secret, b"server", self._server_nonce, self._client_nonce)):
            raise HandshakeError("the server's proof does not match the cluster secret")
        leftover = self._buffer[SERVER_PROOF_BYTES:]
        self._buffer = b""
        return Step(done=True, leftover=leftover)
