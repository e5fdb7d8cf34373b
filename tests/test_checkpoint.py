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


def test_dtypes_npy_does_not_know_round_trip_and_keys_are_refused(tmp_path):
    # .npy stores bfloat16 as a 2-byte void; the header's dtype name brings it back
    path = tmp_path / "ck.npz"
    t = {"w": jnp.asarray([[1.5, -2.0]], jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    checkpoint.save(path, t)
    restored, _ = checkpoint.load(path, t)
    assert restored["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(restored["w"], np.float32), [[1.5, -2.0]])
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf 0 is a typed PRNG key; save jax.random.key_data"):
        checkpoint.save(tmp_path / "key.npz", {"k": jax.random.key(0)})


def test_a_checkpoint_gets_the_permissions_of_any_new_file(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        checkpoint.save(tmp_path / "ck.npz", tree())
    finally:
        os.umask(mask)
    assert (tmp_path / "ck.npz").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
