"""Server-side loops stop at the call's deadline (issue 13, "one call takes a server thread
forever"): the asset id of a 4 EiB sparse file used to hash zeros for ever, ignoring the
deadline, and `--max-workers` such calls left the server answering nobody."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from aifs_proto.v1 import filesystem_pb2
from tests.helpers import call_md, error_info, start_server, stop_server

EIB4 = 1 << 62
SET_SIZE = 8


def _unary(ch: grpc.Channel, name: str, req_cls: type, reply_cls: type) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(f"/aifs.v1.Filesystem/{name}", req_cls.SerializeToString,
                          reply_cls.FromString)


def test_file_info_of_a_huge_sparse_file_stops_at_the_deadline(data_dir: Path) -> None:
    workers = 2
    sp = start_server(data_dir, args=["--max-workers", str(workers)])
    try:
        md = call_md(sp.token)
        with sp.channel() as ch:
            create = _unary(ch, "Create", filesystem_pb2.CreateRequest, filesystem_pb2.EntryReply)
            setattr_ = _unary(ch, "SetAttr", filesystem_pb2.SetAttrRequest,
                              filesystem_pb2.AttrReply)
            info = _unary(ch, "GetFileInfo", filesystem_pb2.InodeRequest,
                          filesystem_pb2.FileInfoReply)
            getattr_ = _unary(ch, "GetAttr", filesystem_pb2.InodeRequest,
                              filesystem_pb2.AttrReply)
            ino = create(filesystem_pb2.CreateRequest(parent=1, name=b"sparse", mode=0o100644),
                         metadata=md, timeout=10).attr.ino
            a = setattr_(filesystem_pb2.SetAttrRequest(ino=ino, fields=SET_SIZE, size=EIB4),
                         metadata=md, timeout=10).attr
            assert a.size == EIB4

            def one(_: int) -> grpc.StatusCode:
                with pytest.raises(grpc.RpcError) as err:
                    info(filesystem_pb2.InodeRequest(ino=ino), metadata=md, timeout=1.0)
                return error_info(err.value)[0]

            # twice as many calls as the server has threads, all at once
            with ThreadPoolExecutor(2 * workers) as pool:
                codes = list(pool.map(one, range(2 * workers)))
            assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
            # every worker thread is free again: an ordinary call is answered promptly
            t0 = time.monotonic()
            assert getattr_(filesystem_pb2.InodeRequest(ino=ino), metadata=md,
                            timeout=10).attr.size == EIB4
            assert time.monotonic() - t0 < 5
        assert "Traceback" not in sp.log()
        # and the server stops promptly on SIGTERM
        t0 = time.monotonic()
        sp.proc.send_signal(signal.SIGTERM)
        assert sp.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 20
    finally:
        stop_server(sp)
