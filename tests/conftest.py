"""Shared test setup: float64 available everywhere (checks cast to the dtype under test)."""

import os

# Several pytest-xdist workers may share one GPU: do not let each grab 75% of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite compiles thousands of tiny programs and runs each once: compiling them without LLVM's
# optimizations takes a quarter off its time (XLA's graph passes, fusion and buffer assignment, and
# with them the temp-byte checks, are unchanged). Set XLA_FLAGS yourself to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
    """The real datasets: $MANUALGRAD_DATA_DIR, else ../shared/data next to the checkout."""
    chosen = os.environ.get("MANUALGRAD_DATA_DIR")
    path = pathlib.Path(chosen) if chosen else ROOT.parent / "shared" / "data"
    return path.resolve() if (path / "mnist").is_dir() and (path / "california_housing").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("the real MNIST / California Housing files are absent (set MANUALGRAD_DATA_DIR to a folder holding mnist/ and california_housing/)")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Prepared datasets go to a per-worker folder, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("manualgrad-cache")
    old = os.environ.get("MANUALGRAD_CACHE_DIR")
    os.environ["MANUALGRAD_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MANUALGRAD_CACHE_DIR", None)
    else:
        os.environ["MANUALGRAD_CACHE_DIR"] = old
