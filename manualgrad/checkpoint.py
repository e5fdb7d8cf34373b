"""Atomic checkpoints of a pytree of arrays plus JSON metadata, verified when read back.

A checkpoint is one ``.npz`` file (a zip of ``.npy`` arrays, no pickle): one array per
leaf of the pytree, and a header holding the metadata, the tree structure, every leaf's
shape and dtype, and a SHA-256 of all the leaves' bytes. :func:`save` writes a temporary
file in the same folder, flushes it to disk and renames it over the old checkpoint, so a
crash leaves either the old or the new checkpoint, never half of one. :func:`load` refuses
(with :class:`CheckpointError`) a truncated or corrupt file, and one whose structure,
shapes or dtypes differ from the pytree it is meant to restore: it never returns wrong
parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "save", "load", "read_meta"]

FORMAT = "manualgrad-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: missing, truncated, corrupt, or of another model."""


def _digest(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for leaf in leaves:
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, tree: Any, meta: dict[str, Any] | None = None) -> None:
    """Write ``tree`` (a pytree of arrays) and ``meta`` (JSON-serialisable) to ``path`` atomically."""
    path = pathlib.Path(path)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            raise CheckpointError(f"manualgrad.checkpoint.save: {path}: leaf {i} is a typed PRNG key; "
                                  "save jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data")
    leaves = [np.asarray(leaf) for leaf in leaves]
    header = {
        "format": FORMAT,
        "treedef": str(treedef),
        "leaves": [{"shape": list(a.shape), "dtype": a.dtype.name} for a in leaves],
        "sha256": _digest(leaves),
        "meta": meta or {},
    }
    # .npy knows NumPy's own dtypes only: others (bfloat16, float8) are stored as unsigned
    # integers of their width and viewed back as the dtype the header names
    arrays = {f"leaf_{i:05d}": a if np.dtype(a.dtype.str) == a.dtype else a.view(f"u{a.dtype.itemsize}")
              for i, a in enumerate(leaves)}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; a checkpoint is like any file written
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read(path: pathlib.Path, where: str) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The verified header and leaves of the checkpoint at ``path`` (format and checksum checked)."""
    if not path.is_file():
        raise CheckpointError(f"{where}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            leaves = [_as_written(z[f"leaf_{i:05d}"], leaf["dtype"]) for i, leaf in enumerate(header["leaves"])]
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: truncated or corrupt ({type(e).__name__}: {e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a manualgrad checkpoint (format {header.get('format')!r})")
    if _digest(leaves) != header["sha256"]:
        raise CheckpointError(f"{where}: corrupt (the arrays do not match the checksum written with them)")
    return header, leaves


def _as_written(a: np.ndarray, dtype: str) -> np.ndarray:
    """A stored leaf as the dtype its header names (a bfloat16 leaf is stored as uint16)."""
    want = np.dtype(jax.numpy.dtype(dtype))
    return a if a.dtype == want or a.dtype.itemsize != want.itemsize else a.view(want)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at ``path``, verified like :func:`load` but without
    restoring the arrays into a model (so settings can be compared before the structure)."""
    path = pathlib.Path(path)
    return _read(path, f"manualgrad.checkpoint.read_meta: {path}")[0]["meta"]


def load(path: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read the checkpoint at ``path`` into the structure of ``like``; return ``(tree, meta)``.

    ``like`` is a pytree with the expected structure, shapes and dtypes (e.g. freshly
    initialised params and optimizer state). Raises :class:`CheckpointError` naming the file
    and what is wrong if the file is missing, unreadable, fails its checksum, or does not
    match ``like``.
    """
    path = pathlib.Path(path)
    where = f"manualgrad.checkpoint.load: {path}"
    header, leaves = _read(path, where)
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    if str(treedef) != header["treedef"]:
        raise CheckpointError(
            f"{where}: holds a different structure.\n  checkpoint: {header['treedef']}\n  expected:   {treedef}"
        )
    for i, (got, want) in enumerate(zip(leaves, like_leaves)):
        want_shape, want_dtype = tuple(np.shape(want)), np.dtype(getattr(want, "dtype", None) or np.asarray(want).dtype)
        if got.shape != want_shape or got.dtype != want_dtype:
            raise CheckpointError(
                f"{where}: leaf {i} has shape {got.shape} dtype {got.dtype}, expected {want_shape} {want_dtype}"
            )
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(a) for a in leaves]), header["meta"]
