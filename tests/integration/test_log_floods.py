"""Refused and failing calls write a bounded number of log lines (issue 13): a caller can send
thousands a second, and one line each would fill the disk and bury what matters."""

from __future__ import annotations

import logging
import shutil
from concurrent import futures
from typing import Any

import grpc
import pytest

from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifs_server import grpc_errors
from aifs_server.grpc_errors import LogLimiter, rpc
from tests.helpers import ServerProc, call_md, open_channel, short_tmpdir

CALLS = 1000


def test_limiter_allows_a_burst_per_period_and_counts_the_rest() -> None:
    now = [0.0]
    lim = LogLimiter(burst=3, period=10.0, clock=lambda: now[0])
    assert [lim.allow("a") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert lim.allow("b") == (True, 0)          # each kind has its own budget
    now[0] = 10.0                                # a new period: the first line tells the count
    assert lim.allow("a") == (True, 2)
    assert lim.allow("a") == (True, 0)


def test_a_thousand_refused_calls_log_a_few_lines(server_module: ServerProc) -> None:
    before = len(server_module.log().splitlines())
    with server_module.channel() as ch:
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        for i in range(CALLS):
            token = "not-a-macaroon" if i % 2 else None
            with pytest.raises(grpc.RpcError) as ei:
                fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(token),
                           timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    new = server_module.log().splitlines()[before:]
    refused = [line for line in new if "refused /aifs.v1.Filesystem/GetAttr" in line]
    # the operator sees that calls are refused, and why ...
    assert refused and "UNAUTHENTICATED" in refused[0]
    # ... in a handful of lines, not a thousand
    assert len(new) <= 2 * grpc_errors.LIMITER.burst, "\n".join(new)
    assert "not-a-macaroon" not in "\n".join(new)   # never a caller's token in the log


def test_a_thousand_internal_errors_log_a_few_tracebacks(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_errors, "LIMITER", LogLimiter(burst=5, period=3600.0))

    class Broken:
        @rpc
        def Fail(self, request: Any, context: grpc.ServicerContext) -> Any:
            raise ValueError("a bug the caller can trigger at will")

    tmp = short_tmpdir()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    try:
        handler = grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: Broken().Fail(req, ctx), request_deserializer=None,
            response_serializer=None)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Broken", {"Fail": handler}),))
        server.add_insecure_port(f"unix:{tmp}/s.sock")
        server.start()
        with caplog.at_level(logging.INFO, logger="aifs.server"), \
                open_channel(f"unix:{tmp}/s.sock") as c:
            call = c.unary_unary("/test.Broken/Fail")
            for _ in range(CALLS):
                with pytest.raises(grpc.RpcError) as ei:
                    call(b"", timeout=10)
                assert ei.value.code() == grpc.StatusCode.INTERNAL
    finally:
        server.stop(None)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [r for r in caplog.records if r.name == "aifs.server"]
    assert 1 <= len(lines) <= 5
    assert lines[0].exc_info is not None   # the first ones keep their traceback
