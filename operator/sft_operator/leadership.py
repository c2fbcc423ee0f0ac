"""Which operator replica may act: kopf's peering rule (the live replica of the highest priority is
active) plus a hand-over wait, so that two replicas never decide at once.

Pure: `Leadership.leads` is given the peering record and both clocks; the controller reads the record
(`Kube.peering_status`) and asks on every resync.
"""

from datetime import datetime, timedelta
from typing import Any

Object = dict[str, Any]


def live_peer_priorities(peers: Object | None, identity: str, now: datetime) -> list[int]:
    """The priorities of the other replicas whose peering record is alive (seen within its lifetime)."""
    priorities = []
    for peer_id, info in (peers or {}).items():
        if peer_id == identity or not isinstance(info, dict) or info.get("lastseen") is None:
            continue
        seen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        if seen + timedelta(seconds=int(info.get("lifetime", 60))) > now:
            priorities.append(int(info.get("priority", 0)))
    return priorities


def is_active(peers: Object | None, identity: str, priority: int, now: datetime) -> bool:
    """kopf's peering rule, for the resync loop: active unless another live peer has >= priority."""
    return all(other < priority for other in live_peer_priorities(peers, identity, now))


def may_lead(active_since: float | None, now: float, handover_seconds: float) -> bool:
    """Whether a replica active by the peering rule since `active_since` (monotonic; -inf when no
    other replica was alive then) may act at `now`. A replica that takes over from a live one waits
    `handover_seconds`, longer than the other's resync period: by then it has seen the change and
    paused, so two replicas never decide at once. One that found no live replica acts at once."""
    return active_since is not None and now - active_since >= handover_seconds


HANDOVER_MARGIN_SECONDS = 1.0  # beyond the resync period: a hand-over waits it out (may_lead)


class Leadership:
    """One replica's view of who leads, kept between resyncs: when it became active by the peering
    rule, and whether another replica was alive then (a hand-over waits; see `may_lead`)."""

    def __init__(self, identity: str, priority: int, handover_seconds: float) -> None:
        self.identity = identity
        self.priority = priority
        self.handover_seconds = handover_seconds
        self.active_since: float | None = None  # monotonic; -inf: no other replica was alive then

    def leads(self, peers: Object | None, wall: datetime, now: float) -> bool:
        """Whether this replica may act now, given kopf's peering record (`peers`: identity -> its
        priority, lastseen, lifetime), the wall clock and the monotonic clock."""
        if not is_active(peers, self.identity, self.priority, wall):
            self.active_since = None
        elif self.active_since is None:
            alone = not live_peer_priorities(peers, self.identity, wall)
            self.active_since = float("-inf") if alone else now
        return may_lead(self.active_since, now, self.handover_seconds)
