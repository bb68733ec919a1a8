import os
from pathlib import Path

import numpy as np

from polyfuse.data.cache import FeatureCache, default_cache_dir, params_digest


def test_hit_miss_keyed_on_content_and_params(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    calls = []

    def compute(value: float) -> np.ndarray:
        calls.append(value)
        return np.full((2, 3), value, dtype=np.float32)

    key_a = params_digest({"size": 28})
    key_b = params_digest({"size": 32})
    first = cache.fetch(b"file-1", key_a, lambda: compute(1.0))
    again = cache.fetch(b"file-1", key_a, lambda: compute(9.0))
    np.testing.assert_array_equal(first, again)
    assert calls == [1.0] and cache.hits == 1 and cache.misses == 1
    cache.fetch(b"file-1 edited", key_a, lambda: compute(2.0))  # changed content → miss
    cache.fetch(b"file-1", key_b, lambda: compute(3.0))  # changed preprocessing → miss
    assert calls == [1.0, 2.0, 3.0]
    # A second cache object over the same folder (another process) sees the entries.
    other = FeatureCache(tmp_path)
    assert other.fetch(b"file-1", key_a, lambda: compute(7.0))[0, 0] == 1.0


def test_params_digest_ignores_order_but_not_values() -> None:
    assert params_digest({"a": 1, "b": 2}) == params_digest({"b": 2, "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})


def test_damaged_pack_is_a_miss_and_gets_rewritten(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = params_digest({})
    cache.fetch(b"x", key, lambda: np.arange(4.0))
    pack = next((tmp_path / "store").glob("*.safetensors"))
    pack.write_bytes(pack.read_bytes()[:-8])  # a damaged disk; our own writes are renamed into place whole
    fresh = FeatureCache(tmp_path)
    value = fresh.fetch(b"x", key, lambda: np.arange(4.0) + 1)
    np.testing.assert_array_equal(value, np.arange(4.0) + 1)
    assert not pack.exists()  # dropped, and the entry lives in a new pack
    np.testing.assert_array_equal(
        FeatureCache(tmp_path).fetch(b"x", key, lambda: np.zeros(4)), np.arange(4.0) + 1
    )
    assert not [p for p in (tmp_path / "store").glob(".tmp-*")]


def test_disabled_cache_always_computes() -> None:
    cache = FeatureCache(None)
    assert cache.fetch(b"x", "k", lambda: np.zeros(1))[0] == 0
    assert cache.fetch(b"x", "k", lambda: np.ones(1))[0] == 1


def test_default_cache_dir_is_not_the_data_folder(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POLYFUSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "polyfuse"
    monkeypatch.setenv("POLYFUSE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert os.path.basename(default_cache_dir()) == "c"
