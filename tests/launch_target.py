"""A module for tests/test_parallel.py to run under ``python -m manualgrad.launch``: it joins the run,
then ``kill``: process 1 kills itself while process 0 waits for it at a barrier (which never comes)."""

import os
import signal
import sys

from manualgrad import parallel

if __name__ == "__main__":
    assert parallel.initialize(timeout_seconds=30)
    import jax
    from jax.experimental import multihost_utils

    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} devices", flush=True)
    if sys.argv[1:] == ["kill"]:
        if jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        multihost_utils.sync_global_devices("never reached by process 1")
