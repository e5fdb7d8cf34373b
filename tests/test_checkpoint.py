"""Checkpoints: round trip, atomic replace, and clear errors for truncated, corrupt or foreign files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import checkpoint


def tree():
    return ({"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}, (), jnp.array(4, jnp.int32))


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, tree(), {"history": [{"epoch": 1, "train_loss": 0.5}]})
    restored, meta = checkpoint.load(path, tree())
    assert meta == {"history": [{"epoch": 1, "train_loss": 0.5}]}
    saved = jax.tree_util.tree_leaves(tree())
    got = jax.tree_util.tree_leaves(restored)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(tree()) and len(got) == 3
    for a, b in zip(got, saved):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, tree(), {"n": 1})
    checkpoint.save(path, tree(), {"n": 2})
    assert checkpoint.load(path, tree())[1] == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, tree())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match="ck.npz: truncated or corrupt"):
        checkpoint.load(path, tree())


def test_flipped_bytes_are_caught_by_the_checksum(tmp_path):
    path = tmp_path / "ck.npz"
    big = {"w": jnp.zeros((64, 64), jnp.float32)}
    checkpoint.save(path, big)
    raw = bytearray(path.read_bytes())
    start = raw.find(b"\x00" * 1024)  # inside the zero weights, stored uncompressed
    raw[start + 100] = 0x3F
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path, big)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, tree())
    with pytest.raises(checkpoint.CheckpointError, match="different structure"):
        checkpoint.load(path, ({"w": jnp.zeros((2, 3))},))
    other = ({"w": jnp.zeros((3, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)}, (), jnp.array(4, jnp.int32))
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf 1 has shape \(2, 3\) dtype float32, expected \(3, 3\)"):
        checkpoint.load(path, other)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "nope.npz", tree())
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "junk.npz", tree())


def test_read_meta_returns_the_verified_metadata_only(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, tree(), {"config": {"lr": 0.1}})
    assert checkpoint.read_meta(path) == {"config": {"lr": 0.1}}
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="read_meta: .*ck.npz: truncated or corrupt"):
        checkpoint.read_meta(path)
