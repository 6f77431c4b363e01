"""Who a node beacons to by unicast, and the limits that keep that bounded. Pure: fed ``now``.

Broadcast reaches the peers of one segment. Beyond it a node beacons by unicast to:

- its seeds' addresses (what their names resolve to now);
- the peers that beacon to it by unicast (a seed answers whoever seeds it), for as long as they
  stay alive: liveness still comes only from a peer's own beacons;
- addresses passed on by its unicast peers (peer exchange), which are only places to try: each
  is probed a few times and forgotten unless a node there starts beaconing back.

Every way a datagram from elsewhere can make a node send is rate-limited here (``RateLimit``),
so a flood of solicits or peer lists cannot make a mesh chatter or reflect traffic at a victim.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RateLimit"]


@dataclass(slots=True)
class RateLimit:
    """A token bucket: at most ``burst`` at once, refilled at ``rate`` per second."""

    burst: float
    rate: float
    _tokens: float = -1.0
    _updated: float = 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough at ``now``; whether they were taken."""
        if self._tokens < 0:  # first use: a full bucket
            self._tokens, self._updated = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True
