"""``python -m manualgrad.check``: see :func:`manualgrad.check.cli.main`."""

from manualgrad.check.cli import main

raise SystemExit(main())
