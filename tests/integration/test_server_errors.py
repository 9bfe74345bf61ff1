"""grpc_errors.rpc over an in-process grpc.server on a real unix socket: AIFSError -> its code,
reason and message; an unexpected exception -> INTERNAL; generators too."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from aifs_core.errors import MissingChunk, NotEmpty
from aifs_server.grpc_errors import rpc
from tests.helpers import error_info, open_channel, short_tmpdir


class _Svc:
    @rpc
    def not_empty(self, request: Any, context: grpc.ServicerContext) -> bytes:
        raise NotEmpty("directory d is not empty; remove its entries first")

    @rpc
    def boom(self, request: Any, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("kaboom")

    @rpc
    def stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"one"
        raise MissingChunk("chunk 00ff is not stored; PutChunks first")


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    tmp = short_tmpdir()
    svc = _Svc()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {
        "NotEmpty": grpc.unary_unary_rpc_method_handler(svc.not_empty),
        "Boom": grpc.unary_unary_rpc_method_handler(svc.boom),
        "Stream": grpc.unary_stream_rpc_method_handler(svc.stream),
    }),))
    server.add_insecure_port(f"unix:{tmp}/s.sock")
    server.start()
    ch = open_channel(f"unix:{tmp}/s.sock")
    try:
        yield ch
    finally:
        ch.close()
        server.stop(None)
        shutil.rmtree(tmp, ignore_errors=True)


def test_aifs_error_keeps_code_reason_message(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        channel.unary_unary("/t.T/NotEmpty")(b"", timeout=10)
    code, reason, msg = error_info(ei.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "NOT_EMPTY"
    assert msg == "directory d is not empty; remove its entries first"


def test_unexpected_exception_is_internal(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        channel.unary_unary("/t.T/Boom")(b"", timeout=10)
    code, reason, msg = error_info(ei.value)
    assert code == grpc.StatusCode.INTERNAL and reason == "INTERNAL"
    assert "RuntimeError: kaboom" in msg and "server log" in msg


def test_streaming_error_after_a_piece(channel: grpc.Channel) -> None:
    got: list[bytes] = []
    with pytest.raises(grpc.RpcError) as ei:
        for piece in channel.unary_stream("/t.T/Stream")(b"", timeout=10):
            got.append(piece)
    code, reason, _ = error_info(ei.value)
    assert got == [b"one"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "MISSING_CHUNK"
