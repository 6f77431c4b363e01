"""The ``zmqkit`` command: discovery and the patterns from a shell.

General layout:

- ``app``        the parser built from the command modules, and ``main``: exit statuses,
                 Ctrl-C, closed pipes, usage errors with the subcommand's own usage line
- ``parsing``    the parser class, ``add_command`` (help that ends with examples) and the
                 checked option values (ports, durations, counts, rates, JSON literals)
- ``scope``      the discovery and security options, and the node they give
- ``output``     terminal or pipe: rich views on one, plain lines on the other; JSON results
- ``window``     the sliding window behind ``hz`` and ``bw`` (pure)
- one module per command group: ``peers``, ``call``, ``topic`` (pub, echo), ``rates`` (hz,
  bw), ``keys``, ``benchmark`` (bench), ``demo``; each has ``register(commands, scope)``,
  listed in ``app.COMMANDS``

Only the command (and the demos) print or read the environment, but for the one variable the
library reads itself: ZMQKIT_PORT, the default beacon port (``zmqkit.beacon.default_port``).
"""

from __future__ import annotations

from .app import build_parser, main
from .parsing import UsageError

__all__ = ["UsageError", "build_parser", "main"]
