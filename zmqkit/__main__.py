"""``python -m zmqkit``: the same as the ``zmqkit`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
