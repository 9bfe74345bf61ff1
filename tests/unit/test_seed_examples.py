"""The seed document's usage examples, verbatim except for the import line and the data path.

The seed's import lines
    from aifs.asset import AssetManager
    from aifs.asset_kinds_simple import TensorData
became `from aifs_server import AssetManager, TensorData`, and "/path/to/aifs" is a tmp dir.
The blocks run in order in one namespace, as a reader of the document would run them.
"""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path
from typing import Any

import pytest

BASIC = '''
from aifs_server import AssetManager, TensorData
import numpy as np

# Initialize with compression level 1 (default)
asset_manager = AssetManager("/path/to/aifs", compression_level=1)

# Store data (automatically compressed)
data = b"Hello, AIFS! " * 1000
asset_id = asset_manager.put_asset(data, "blob")

# Retrieve data (automatically decompressed)
retrieved = asset_manager.get_asset(asset_id)
assert retrieved["data"] == data
'''

ADVANCED = '''
# High compression for archival storage
asset_manager = AssetManager("/path/to/aifs", compression_level=22)

# Fast compression for real-time operations
asset_manager = AssetManager("/path/to/aifs", compression_level=1)

# Access compression service directly
compression_service = asset_manager.compression_service
stats = compression_service.get_compression_stats()
print(f"Algorithm: {stats['algorithm']}")  # zstd
print(f"Level: {stats['compression_level']}")  # 1-22
'''

TENSOR = '''
# Large tensor data is automatically compressed
array = np.random.rand(1000, 1000).astype(np.float32)
tensor_data = TensorData(
    data=array,
    dtype=str(array.dtype),
    shape=array.shape,
    metadata={'name': 'large_tensor'}
)

# Compression happens transparently
tensor_id = asset_manager.put_tensor(tensor_data)
retrieved_tensor = asset_manager.get_tensor(tensor_id)
assert np.array_equal(retrieved_tensor.data, array)
'''

RUNTIME = '''
# Change compression level at runtime
asset_manager.compression_service.set_compression_level(10)

# Get compression statistics
info = asset_manager.compression_service.get_compression_info(
    original_size=1000,
    compressed_size=300
)
print(f"Compression ratio: {info['compression_ratio']}")
print(f"Space saved: {info['space_saved_percent']}%")
'''


def _run(block: str, ns: dict[str, Any], root: Path) -> None:
    code = textwrap.dedent(block).replace('"/path/to/aifs"', repr(str(root)))
    exec(compile(code, "<seed example>", "exec"), ns)  # noqa: S102 - the examples are the test


@pytest.fixture
def seed_ns(tmp_path: Path) -> Any:
    ns: dict[str, Any] = {}
    yield ns
    # The examples never close their managers; close every one they made.
    from aifs_server import AssetManager

    for obj in gc.get_objects():
        if isinstance(obj, AssetManager):
            obj.close()


def test_seed_examples_run_in_order(tmp_path: Path, seed_ns: dict[str, Any],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "aifs"
    _run(BASIC, seed_ns, root)
    assert (root / "config.json").is_file()  # the manager formatted the directory
    assert seed_ns["retrieved"]["data"] == b"Hello, AIFS! " * 1000

    _run(ADVANCED, seed_ns, root)
    out = capsys.readouterr().out
    assert "Algorithm: zstd" in out and "Level: 1" in out
    # The data stored by the first manager is still there for the later ones.
    assert seed_ns["asset_manager"].get_asset(seed_ns["asset_id"])["data"] == seed_ns["data"]

    _run(TENSOR, seed_ns, root)
    back = seed_ns["retrieved_tensor"]
    assert back.metadata == {"name": "large_tensor"} and back.shape == (1000, 1000)
    assert back.data.dtype == seed_ns["array"].dtype

    _run(RUNTIME, seed_ns, root)
    out = capsys.readouterr().out
    assert "Compression ratio:" in out and "Space saved: 70" in out
    am = seed_ns["asset_manager"]
    assert am.compression_service.get_compression_stats()["compression_level"] == 10
    # The new level is the one new chunks are written with.
    before = am.compression_service.get_compression_stats()["bytes_in"]
    am.put_asset(b"level ten " * 5000, "blob")
    assert am.compression_service.get_compression_stats()["bytes_in"] > before


def test_seed_basic_example_retrieves_metadata(tmp_path: Path, seed_ns: dict[str, Any]) -> None:
    _run(BASIC, seed_ns, tmp_path / "aifs")
    got = seed_ns["retrieved"]
    assert got["kind"] == "blob" and got["size"] == 13000
    assert got["stored_bytes"] < got["size"]  # compressed (then encrypted) on disk
