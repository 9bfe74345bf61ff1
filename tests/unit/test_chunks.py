"""ChunkService over a real LocalChunkStore, keyring and namespace keys."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from aifs_core.codec import CompressionService, is_zstd_frame
from aifs_core.errors import CorruptChunk, InvalidArgument, KeyUnavailable, MissingChunk, NotFound
from aifs_core.malloc_tuning import tune_malloc
from aifs_server.chunks import ChunkService
from aifs_server.chunkstore import LocalChunkStore
from aifs_server.envelope import ENVELOPE_STATS, MAGIC, decode_frame
from aifs_server.kms import LocalKeyring, NamespaceKeyCache
from tests.stored_chunks import StoredChunk, stored_chunks

MiB = 1 << 20
STORAGE_KEY = bytes(range(32))


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"tensor", b"gradient", b"epoch", b"layer", b"weight", b"batch", b"%d" % seed]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(words, k=20)) + b"\n"
    return bytes(out[:n])


def cid(data: bytes) -> bytes:
    return blake3(data).digest()


class Env:
    """A data dir's worth of storage parts under tmp_path, re-openable like a restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        LocalKeyring.create(root / "keyring.json")
        self.open()

    def open(self) -> ChunkService:
        self.kms = LocalKeyring(self.root / "keyring.json")
        self.cache = NamespaceKeyCache(self.kms, self.root / "nskeys.json")
        self.store = LocalChunkStore(self.root / "chunks")
        self.svc = ChunkService(self.store, self.cache, CompressionService(), STORAGE_KEY)
        return self.svc

    def stored_files(self) -> list[StoredChunk]:
        """Every stored envelope: chunk files and small.sqlite's rows."""
        return sorted(stored_chunks(self.root / "chunks"))


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path)


def test_put_read_and_dedup(env: Env) -> None:
    data = text(MiB)
    new, stored = env.svc.put("default", cid(data), data)
    assert new is True and 0 < stored < len(data) // 2
    assert env.svc.put("default", cid(data), data) == (False, stored)
    assert len(env.stored_files()) == 1
    assert env.svc.read("default", cid(data)) == data
    assert env.svc.read("default", cid(data), 12345, 100) == data[12345:12445]
    assert env.svc.stored_size("default", cid(data)) == stored
    assert env.svc.has("default", [cid(data), cid(b"other")]) == [True, False]


def test_on_disk_bytes_reveal_neither_content_nor_ids(env: Env) -> None:
    marker = b"Project-Nightingale-secret-7731"
    data = (text(200_000) + marker) * 3
    env.svc.put("default", cid(data), data)
    [path] = env.stored_files()
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    assert len(raw) < len(data)
    assert marker not in raw and b"gradient" not in raw
    # the stored name is neither the chunk id nor guessable from it without the storage key
    assert path.name != cid(data).hex()
    assert path.name == blake3(
        (7).to_bytes(2, "big") + b"default" + cid(data), key=STORAGE_KEY
    ).hexdigest()
    assert cid(data).hex() not in " ".join(p.name for p in env.stored_files())
    for f in (env.root / "chunks").rglob("*"):   # small.sqlite too, had it taken the chunk
        if f.is_file():
            assert marker not in f.read_bytes() and cid(data).hex().encode() not in f.read_bytes()


def test_dedup_is_per_namespace_and_names_depend_on_the_storage_key(env: Env) -> None:
    data = text(5000)
    assert env.svc.put("a", cid(data), data)[0] is True
    assert env.svc.put("b", cid(data), data)[0] is True
    assert env.svc.name_for("a", cid(data)) != env.svc.name_for("b", cid(data))
    assert len(env.stored_files()) == 2
    assert env.svc.has("c", [cid(data)]) == [False]
    other = ChunkService(env.store, env.cache, CompressionService(), os.urandom(32))
    assert other.name_for("a", cid(data)) != env.svc.name_for("a", cid(data))
    assert other.has("a", [cid(data)]) == [False]
    with pytest.raises(InvalidArgument, match="32 bytes"):
        ChunkService(env.store, env.cache, CompressionService(), b"short")


def test_bad_input(env: Env) -> None:
    data = text(1000)
    with pytest.raises(InvalidArgument, match="not the BLAKE3") as exc:
        env.svc.put("default", cid(b"something else"), data)
    assert cid(b"something else").hex() in str(exc.value)
    with pytest.raises(InvalidArgument, match="32 bytes"):
        env.svc.put("default", b"\x00" * 16, data)
    for level in (0, 23):
        with pytest.raises(InvalidArgument, match="1-22"):
            env.svc.put("default", cid(data), data, level=level)
    assert env.stored_files() == []
    # reading a chunk the store lacks is lost data (EIO), not a missing file (issue 13)
    with pytest.raises(MissingChunk, match=cid(data).hex()):
        env.svc.read("default", cid(data))
    with pytest.raises(MissingChunk):
        list(env.svc.frames("default", cid(data)))


def test_incompressible_chunk_is_stored_raw_not_inflated(env: Env) -> None:
    data = os.urandom(MiB)
    _, stored = env.svc.put("default", cid(data), data)
    assert stored < len(data) + 2048  # header + 16 frame tags; no zstd expansion
    assert not any(f.compressed for f in env.svc.frames("default", cid(data)))
    assert env.svc.read("default", cid(data)) == data


def test_per_namespace_level(env: Env) -> None:
    rng = random.Random(5)
    vocab = [bytes(rng.choices(b"etaoinshrdlu", k=rng.randint(2, 8))) for _ in range(500)]
    data = b" ".join(rng.choices(vocab, k=60_000))[:MiB // 4]
    _, fast = env.svc.put("fast", cid(data), data, level=1)
    _, small = env.svc.put("small", cid(data), data, level=19)
    assert small < fast
    assert env.svc.read("small", cid(data)) == env.svc.read("fast", cid(data)) == data


def test_4kib_read_of_1mib_chunk_decrypts_one_frame(env: Env) -> None:
    data = text(MiB)
    env.svc.put("default", cid(data), data)
    ENVELOPE_STATS.reset()
    assert env.svc.read("default", cid(data), 700_000, 4096) == data[700_000:704_096]
    assert ENVELOPE_STATS.frames_decrypted == 1
    ENVELOPE_STATS.reset()
    frames = list(env.svc.frames("default", cid(data), 700_000, 4096))
    assert ENVELOPE_STATS.frames_decrypted == 1 and len(frames) == 1
    assert is_zstd_frame(frames[0].data)
    f = frames[0]
    assert decode_frame(f)[700_000 - f.offset : 704_096 - f.offset] == data[700_000:704_096]


def test_rotation_and_restart_keep_everything_readable(env: Env) -> None:
    before = [text(100_000, seed=i) for i in range(3)]
    for d in before:
        env.svc.put("default", cid(d), d)
    assert env.cache.rotate() == "local:2"
    after = [text(100_000, seed=10 + i) for i in range(3)]
    for d in after:
        env.svc.put("default", cid(d), d)
    def key_id(d: bytes) -> bytes:  # the envelope's key id field (docs/FORMAT.md)
        raw = env.store.get(env.svc.name_for("default", cid(d)))
        return raw[11 : 11 + raw[10]]

    assert {key_id(d) for d in before} == {b"nsk:1"}
    assert {key_id(d) for d in after} == {b"nsk:2"}
    svc = env.open()  # a restart: fresh keyring, cache and store objects
    for d in before + after:
        assert svc.read("default", cid(d)) == d
    # the two generations use two namespace keys, each unwrapped once
    assert env.kms.calls == {"wrap": 0, "unwrap": 2}


def test_n_chunks_cost_one_kms_call(env: Env) -> None:
    chunks = [text(20_000, seed=i) for i in range(40)]
    for d in chunks:
        env.svc.put("default", cid(d), d)
    assert env.kms.calls == {"wrap": 1, "unwrap": 0}
    svc = env.open()
    for d in chunks:
        assert svc.read("default", cid(d)) == d
    assert env.kms.calls == {"wrap": 0, "unwrap": 1}


def test_delete(env: Env) -> None:
    data = text(3000)
    env.svc.put("default", cid(data), data)
    assert env.svc.delete("default", cid(data)) is True
    assert env.svc.delete("default", cid(data)) is False
    assert env.svc.has("default", [cid(data)]) == [False]
    with pytest.raises(NotFound):
        env.svc.stored_size("default", cid(data))
    assert env.stored_files() == []


def test_legacy_raw_chunk_in_the_store_is_readable(env: Env) -> None:
    data = text(50_000)
    env.store.put(env.svc.name_for("default", cid(data)), data)
    assert env.svc.read("default", cid(data)) == data
    assert env.svc.read("default", cid(data), 10, 20) == data[10:30]


def test_many_threads_put_and_read(env: Env) -> None:
    chunks = [text(70_000, seed=i % 12) for i in range(48)]  # 12 distinct, each put 4 times
    errors: list[BaseException] = []
    news: list[bool] = []
    lock = threading.Lock()

    def work(part: list[bytes]) -> None:
        try:
            for d in part:
                new, _ = env.svc.put("default", cid(d), d)
                with lock:
                    news.append(new)
                assert env.svc.read("default", cid(d), 1000, 70_000) == d[1000:]
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(chunks[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert news.count(True) == 12
    assert len(env.stored_files()) == 12
    assert env.kms.calls["wrap"] == 1


def test_a_kms_key_missing_from_the_keyring_is_key_unavailable(env: Env) -> None:
    old = text(30_000, seed=1)
    env.svc.put("default", cid(old), old)
    env.cache.rotate()
    new = text(30_000, seed=2)
    env.svc.put("default", cid(new), new)
    # someone "cleans up" the keyring, dropping the retired key
    path = env.root / "keyring.json"
    doc = json.loads(path.read_text())
    del doc["keys"]["local:1"]
    path.write_text(json.dumps(doc))
    svc = env.open()
    with pytest.raises(KeyUnavailable, match="'local:1'.*restore") as exc:
        svc.read("default", cid(old))
    assert exc.value.reason == "KEY_UNAVAILABLE"
    assert svc.read("default", cid(new)) == new  # chunks under the current key still read


def test_put_batch_stores_every_chunk_once_and_reads_back(env: Env) -> None:
    datas = [text(MiB, seed=i) for i in range(6)] + [os.urandom(1000)]
    datas.append(datas[0])  # a duplicate inside the batch is stored once
    results = env.svc.put_batch("default", [(cid(d), d) for d in datas], 3)
    assert [new for new, _ in results[1:7]] == [True] * 6
    # the two copies race to link: exactly one of them stores it, both report its size
    assert sorted([results[0][0], results[7][0]]) == [False, True]
    assert results[0][1] == results[7][1]
    assert len(env.stored_files()) == 7
    for d in datas:
        assert env.svc.read("default", cid(d)) == d


def test_put_batch_refuses_a_chunk_whose_id_does_not_match(env: Env) -> None:
    good, bad = text(4096, seed=1), text(4096, seed=2)
    with pytest.raises(InvalidArgument, match="not the BLAKE3"):
        env.svc.put_batch("default", [(cid(good), good), (cid(good), bad)])
    assert env.svc.has("default", [cid(bad)]) == [False]


def test_4kib_read_of_a_stored_1mib_chunk_reads_about_one_frame(env: Env) -> None:
    data = os.urandom(MiB)
    env.svc.put("default", cid(data), data)
    (stored,) = env.stored_files()
    for off in (0, 700_000, MiB - 4096):
        ENVELOPE_STATS.reset()
        assert env.svc.read("default", cid(data), off, 4096) == data[off:off + 4096]
        # the header probe and one 64 KiB frame: not the whole ~1 MiB file
        assert ENVELOPE_STATS.bytes_read <= 4096 + 65536 + 16, ENVELOPE_STATS.snapshot()
        ENVELOPE_STATS.reset()
        frames = list(env.svc.frames("default", cid(data), off, 4096))
        assert len(frames) == 1 and ENVELOPE_STATS.bytes_read <= 4096 + 65536 + 16
    ENVELOPE_STATS.reset()
    assert env.svc.read("default", cid(data)) == data
    assert ENVELOPE_STATS.bytes_read == stored.size()  # a whole read: every byte once
    with pytest.raises(MissingChunk, match=cid(b"nope").hex()):
        env.svc.read("default", cid(b"nope"), 0, 10)


def test_a_damaged_stored_chunk_is_corrupt_on_ranged_reads(env: Env) -> None:
    data = os.urandom(MiB)
    env.svc.put("default", cid(data), data)
    (stored,) = env.stored_files()
    raw = bytearray(stored.read_bytes())
    raw[-5] ^= 1  # inside the last frame
    stored.path.chmod(0o600)
    stored.write_bytes(bytes(raw))
    assert env.svc.read("default", cid(data), 0, 4096) == data[:4096]
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        env.svc.read("default", cid(data), MiB - 4096, 4096)
    stored.write_bytes(bytes(raw[:-1000]))  # truncated
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        env.svc.read("default", cid(data), 0, 4096)


def test_a_whole_read_checks_the_plaintext_against_the_chunk_id(env: Env) -> None:
    """Envelopes keep no frame digests: a whole read (what fsck --read-data does) is checked
    against the chunk id. Here a chunk sealed under the id of other bytes (the GCM tags and
    associated data all agree) is CorruptChunk read whole; a ranged read returns its bytes."""
    from aifs_server.envelope import seal_chunk

    data, other = os.urandom(MiB), os.urandom(16)
    name = env.svc.name_for("default", cid(other))
    sealed = seal_chunk(cid(other), data, env.cache.for_namespace("default"), CompressionService())
    env.store.put(name, sealed)
    assert env.svc.read("default", cid(other), 0, 4096) == data[:4096]
    with pytest.raises(CorruptChunk, match=cid(other).hex()):
        env.svc.read("default", cid(other))
    env.svc.put("default", cid(data), data)
    assert env.svc.read("default", cid(data)) == data


def test_tune_malloc_applies_on_glibc_and_is_idempotent() -> None:
    import platform

    applied = tune_malloc()
    if platform.libc_ver()[0] == "glibc":
        assert applied is True
    assert tune_malloc() is applied


def test_a_damaged_small_chunk_is_corrupt_never_wrong_bytes(env: Env) -> None:
    data = os.urandom(3000)            # a small envelope: a row of small.sqlite
    env.svc.put("default", cid(data), data)
    (stored,) = env.stored_files()
    assert stored.packed
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 1
    stored.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        env.svc.read("default", cid(data))
