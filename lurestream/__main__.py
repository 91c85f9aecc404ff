"""``python -m lurestream`` is the ``lurestream`` command."""

from lurestream.cli import main

raise SystemExit(main())
