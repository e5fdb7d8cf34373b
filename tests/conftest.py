"""Shared test setup: float64 available everywhere (checks cast to the dtype under test)."""

import os

# Several pytest-xdist workers may share one GPU: do not let each grab 75% of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
