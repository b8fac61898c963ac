"""A small asyncio client for modeld's socket: modelctl, the gateway and scripts use it.
It answers in the wire types (modeld/wire) where a method has one."""

from modeld.client.connection import (
    Client,
    DaemonUnreachable,
    RpcError,
    UnreadableAnswer,
    call,
    default_socket,
    read_answer,
)

__all__ = [
    "Client",
    "DaemonUnreachable",
    "RpcError",
    "UnreadableAnswer",
    "call",
    "default_socket",
    "read_answer",
]
