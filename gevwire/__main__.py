"""``python -m gevwire``: the command line (see :mod:`gevwire.cli`)."""

from gevwire.cli import main

raise SystemExit(main())
