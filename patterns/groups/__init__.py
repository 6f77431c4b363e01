"""Groups, as in Zyre: nodes JOIN and LEAVE named groups, SHOUT to a group, WHISPER to one peer.

    with groups.Groups(node) as chat:
        chat.join("ops")                            # peers see a JOIN event
        chat.shout("ops", {"text": "deploying"})    # every member of "ops" that is connected
        chat.whisper(peer_uuid, "psst", timeout=2)  # one peer; returns once it has the message
        for event in chat.events(idle_timeout=1.0): # JOIN, LEAVE, GONE, SHOUT, WHISPER
            print(event.kind, event.peer, event.group, event.body)

    async with groups.AsyncGroups(node) as chat:    # the same, for asyncio code
        await chat.join("ops")
        async for event in chat.events(): ...

Membership travels in the beacon: a node's groups are its ``groups`` header (comma-separated),
so a join or a leave is an UPDATED presence event for every peer, and a node that dies leaves
all its groups when discovery declares it gone (GOODBYE or expiry). Shouts are publications on
the topic ``zmqkit.group.<group>`` of each node's ``groups-pub`` socket; whispers are requests
(``zmqkit.groups.whisper``) to the peer's ``groups`` ROUTER, acknowledged by a reply, so a
whisper to a dead peer fails within its deadline instead of vanishing.

Guarantees and limits: shouts are at most once and in order per sender, like pub/sub (a member
whose queue is full misses them; ``stats()["gaps"]`` counts what was missed). A peer's JOIN is
reported once its subscription to the group has reached this node's publisher (the XPUB reads
the mark its SUB subscribes after the group's topic), so a shout sent as the JOIN is seen
reaches it; a peer that sends no mark is reported ``JOIN_GRACE`` (2 s) after its beacon. A
whisper that returns has reached the peer's inbox. Events wait in an inbox of 10,000 (the oldest
dropped and counted beyond that) for ``recv`` and ``events``; callbacks see every event too
(``Groups``: in the groups thread; ``AsyncGroups``: on the loop).

- ``wire``          the messages: header, shouts, whispers (docs/protocol.md, section 9.3)
- ``core``          ``GroupsCore`` and the events: membership, whispers, shout intake (pure)
- ``engine``        the loop of the groups thread, which alone owns the sockets
- ``runner``        that thread's life, and the hand-off to it from any thread
- ``inbox``         events waiting for their reader, bounded
- ``base``          what both front-ends share: life cycle, membership, shouts, callbacks
- ``groups``        ``Groups``: the blocking front-end, usable from any thread
- ``async_groups``  ``AsyncGroups``: the asyncio front-end, on one loop
"""

from __future__ import annotations

from .async_groups import AsyncGroups
from .core import GroupEvent, GroupEventKind, GroupsCore, Member
from .groups import Groups
from .inbox import MAX_INBOX
from .runner import DEFAULT_TIMEOUT
from .wire import (
    GROUPS_HEADER,
    PUB_ROLE,
    ROLE,
    TOPIC_PREFIX,
    WHISPER_METHOD,
    format_groups,
    parse_groups,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "GROUPS_HEADER",
    "MAX_INBOX",
    "PUB_ROLE",
    "ROLE",
    "TOPIC_PREFIX",
    "WHISPER_METHOD",
    "AsyncGroups",
    "GroupEvent",
    "GroupEventKind",
    "Groups",
    "GroupsCore",
    "Member",
    "format_groups",
    "parse_groups",
]
