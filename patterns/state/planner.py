"""Which member to ask for a sync, and when: pure, fed ``now`` (monotonic seconds)."""

from __future__ import annotations

import itertools
import uuid as uuid_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["FAILURE_PENALTY", "MAX_BACKOFF", "Plan", "SyncPlanner", "SyncStatus"]

FAILURE_PENALTY = 5.0  # seconds a member that failed a sync is asked only as a last resort
MAX_BACKOFF = 10.0  # the longest wait between two sync requests after failures in a row


class Plan(NamedTuple):
    """What the planner wants done now."""

    ask: uuid_module.UUID | None = None  # send a sync request to this member
    timed_out: uuid_module.UUID | None = None  # the request in flight to this member failed
    alone: bool = False  # no member showed up: this replica is synced as it is
    give_up: tuple[bytes, ...] = ()  # writers whose gaps nobody can fill (see skip_gap)


class SyncStatus(NamedTuple):
    """Where a replica's syncing stands: ``State.sync_status()``."""

    synced: bool  # the initial sync is done (a member's snapshot merged, or no member found)
    members: int  # members known to sync with
    asking: uuid_module.UUID | None  # the member a sync request waits on now
    failures: int  # sync requests that failed in a row (0 once one succeeds)
    last_error: str | None  # why the last one failed
    retry_in: float  # seconds before the next request may leave (backing off after failures)

    def __str__(self) -> str:
        state = "synced" if self.synced else "not synced"
        parts = [f"{state}, {self.members} members"]
        if self.asking is not None:
            parts.append(f"asking {self.asking}")
        if self.failures:
            parts.append(f"{self.failures} syncs failed in a row (last: {self.last_error}), "
                         f"next try in {self.retry_in:.1f} s")
        return "; ".join(parts)


@dataclass(slots=True)
class _Claim:
    seq: int
    member: uuid_module.UUID
    since: float


@dataclass
class SyncPlanner:
    """Decides which member to ask for a sync, and when. Pure: fed ``now`` (monotonic seconds).

    Reasons to ask: not synced yet (ask any member; alone after ``join_wait`` with none); a gap
    in a writer's stream (ask a member whose digest covers it, else each member once, and after
    ``give_up`` seconds with nobody able to fill it, give it up); a member's digest ahead of ours
    for ``grace`` seconds (ask that member). One request at a time, ``timeout`` seconds each.
    After a failure the next request waits ``retry`` seconds, doubled with each failure in a
    row up to ``max_backoff``: a member that never answers is asked less and less often.
    """

    join_wait: float = 0.5
    timeout: float = 2.0
    grace: float = 1.0
    give_up: float = 5.0
    retry: float = 0.2
    max_backoff: float = MAX_BACKOFF
    failures: int = 0
    last_error: str | None = None
    members: dict[uuid_module.UUID, str] = field(default_factory=dict)
    digests: dict[uuid_module.UUID, dict[bytes, int]] = field(default_factory=dict)
    inflight: tuple[uuid_module.UUID, float] | None = None
    started_at: float | None = None
    _claims: dict[bytes, _Claim] = field(default_factory=dict)
    _asked: dict[bytes, dict[uuid_module.UUID, int]] = field(default_factory=dict)
    _gap_since: dict[bytes, float] = field(default_factory=dict)
    _failed_at: dict[uuid_module.UUID, float] = field(default_factory=dict)
    _not_before: float = 0.0
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def start(self, now: float) -> None:
        """The replica runs from ``now``: alone after ``join_wait`` from here."""
        self.started_at = now

    def set_members(self, members: Mapping[uuid_module.UUID, str]) -> uuid_module.UUID | None:
        """The members now known (node uuid -> sync endpoint). Returns the member of the request
        in flight if it has gone (the request has failed)."""
        self.members = dict(members)
        for gone in [m for m in self.digests if m not in self.members]:
            del self.digests[gone]
        self._failed_at = {m: at for m, at in self._failed_at.items() if m in self.members}
        for writer in [w for w, claim in self._claims.items() if claim.member not in self.members]:
            del self._claims[writer]  # it went with what it had: nobody else claimed it
        if self.inflight is not None and self.inflight[0] not in self.members:
            gone_member = self.inflight[0]
            self.inflight = None
            return gone_member
        return None

    def digest_from(self, member: uuid_module.UUID, digest: Mapping[bytes, int],
                    applied: Mapping[bytes, int], now: float) -> None:
        """A member's digest: note what it has that we lack."""
        self.digests[member] = dict(digest)
        for writer, seq in digest.items():
            if seq > applied.get(writer, 0):
                claim = self._claims.get(writer)
                if claim is None:
                    self._claims[writer] = _Claim(seq, member, now)
                elif seq > claim.seq:
                    claim.seq, claim.member = seq, member

    def succeeded(self, now: float) -> None:
        """The request in flight was answered and merged."""
        self.inflight = None
        self.failures = 0
        self.last_error = None

    def failed(self, now: float, why: str = "") -> None:
        """The request in flight failed: its member is asked last for a while, and the next
        request waits, longer after each failure in a row (up to ``max_backoff``)."""
        if self.inflight is not None:
            self._failed_at[self.inflight[0]] = now
        self.inflight = None
        self.failures += 1
        self.last_error = why or "failed"
        backoff = self.retry * 2.0 ** min(self.failures - 1, 32)
        self._not_before = now + min(backoff, self.max_backoff)

    def status(self, now: float, *, synced: bool) -> SyncStatus:
        """Where syncing stands at ``now``."""
        asking = self.inflight[0] if self.inflight is not None else None
        return SyncStatus(synced, len(self.members), asking, self.failures, self.last_error,
                          max(0.0, self._not_before - now))

    def next_wake(self, now: float, *, synced: bool, gaps: bool) -> float:
        """Seconds until the planner may want to act again (a bound for the owner's wait)."""
        if self.inflight is not None:
            return max(0.0, self.inflight[1] - now)
        if now < self._not_before:
            return self._not_before - now
        if not synced or gaps or self._claims:
            return 0.05
        return 3600.0

    def plan(self, now: float, *, synced: bool, applied: Mapping[bytes, int],
             missing: Mapping[bytes, int]) -> Plan:
        """What to do now, given the replica's progress (``applied``, ``missing`` gaps)."""
        if self.inflight is not None:
            member, deadline = self.inflight
            if now < deadline:
                return Plan()
            self.failed(now, f"{member} did not answer in {self.timeout:g} s")
            return Plan(timed_out=member)
        if not synced and not self.members:
            started = now if self.started_at is None else self.started_at
            return Plan(alone=now - started >= self.join_wait)
        if now < self._not_before:
            return Plan()
        if not synced:
            return Plan(ask=self._ask(self._pick(list(self.members), now), now))
        needs = self._needs(now, applied, missing)
        for writer, seq in needs.items():
            asked = self._asked.setdefault(writer, {})
            covering = [m for m in self.members
                        if self.digests.get(m, {}).get(writer, 0) >= seq
                        and self.digests[m][writer] > asked.get(m, -1)]
            if covering:
                member = self._pick(covering, now)
                asked[member] = self.digests[member][writer]
                self._claims.pop(writer, None)
                return Plan(ask=self._ask(member, now))
        for writer in needs:
            asked = self._asked[writer]
            untried = [m for m in self.members if m not in asked]
            if untried and writer in missing:
                member = self._pick(untried, now)
                asked[member] = self.digests.get(member, {}).get(writer, 0)
                return Plan(ask=self._ask(member, now))
        hopeless = tuple(w for w in needs
                         if w in missing and now - self._gap_since[w] >= self.give_up)
        for writer in hopeless:
            self._forget(writer)
        return Plan(give_up=hopeless)

    def _needs(
        self, now: float, applied: Mapping[bytes, int], missing: Mapping[bytes, int]
    ) -> dict[bytes, int]:
        needs = dict(missing)
        for writer, claim in list(self._claims.items()):
            if applied.get(writer, 0) >= claim.seq:
                del self._claims[writer]
            elif now - claim.since >= self.grace and writer not in needs:
                needs[writer] = applied.get(writer, 0) + 1
        for writer in [w for w in self._gap_since if w not in needs]:
            self._forget(writer)
        for writer in needs:
            self._gap_since.setdefault(writer, now)
        return needs

    def _forget(self, writer: bytes) -> None:
        self._gap_since.pop(writer, None)
        self._asked.pop(writer, None)
        self._claims.pop(writer, None)

    def _pick(self, candidates: list[uuid_module.UUID], now: float) -> uuid_module.UUID:
        """Members that failed recently last; otherwise take turns."""
        turn = next(self._turn)
        fresh = [m for m in candidates
                 if now - self._failed_at.get(m, -FAILURE_PENALTY) >= FAILURE_PENALTY]
        pool = sorted(fresh or candidates)
        return pool[turn % len(pool)]

    def _ask(self, member: uuid_module.UUID, now: float) -> uuid_module.UUID:
        self.inflight = (member, now + self.timeout)
        return member
