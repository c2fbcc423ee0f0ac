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
    """Whether a replica active by the peering rule since `active_since` (monotonic) may act at `now`:
    only once it has stayed active for `handover_seconds`."""
    return active_since is not None and now - active_since >= handover_seconds


HANDOVER_MARGIN_SECONDS = 1.0  # beyond the resync period and the peering lifetime (handover_seconds)


def handover_seconds(resync_seconds: float, peering_lifetime: float) -> float:
    """How long a replica that became active waits before it acts, whatever it saw of the others.

    Longer than the resync period: a replica it takes over from has seen the newcomer and paused by
    then. Longer than the peering lifetime: a record that looked expired may belong to a live replica
    that could not renew it (an API server or etcd outage stops every renewal, so after one each
    replica sees the others expired); kopf renews a live replica's record within its lifetime, so by
    then it shows again. Acting at once on "no live replica" let two replicas create the same gangs
    after every outage longer than the lifetime, and when both started together (the fault soak).
    """
    return max(resync_seconds, peering_lifetime) + HANDOVER_MARGIN_SECONDS


class Leadership:
    """One replica's view of who leads, kept between resyncs: since when it is active by the peering
    rule (it acts once that has lasted `handover_seconds`; see `may_lead`), and when it last read the
    peering record."""

    def __init__(self, identity: str, priority: int, handover_seconds: float, peering_lifetime: float) -> None:
        self.identity = identity
        self.priority = priority
        self.handover_seconds = handover_seconds
        self.peering_lifetime = peering_lifetime
        self.active_since: float | None = None  # monotonic
        self.last_read: float | None = None  # monotonic: the last peering record it was given

    def leads(self, peers: Object | None, wall: datetime, now: float) -> bool:
        """Whether this replica may act now, given kopf's peering record (`peers`: identity -> its
        priority, lastseen, lifetime), the wall clock and the monotonic clock.

        Reads further apart than the peering lifetime (an API outage, a stalled process) restart the
        hand-over: a whole life of another replica's record may lie in the gap, so being active on
        both sides of it proves nothing (a standby that read itself active just before an outage
        would otherwise act at once after it, beside the leader whose record the outage let expire).
        """
        if self.last_read is not None and now - self.last_read > self.peering_lifetime:
            self.active_since = None
        self.last_read = now
        if not is_active(peers, self.identity, self.priority, wall):
            self.active_since = None
        elif self.active_since is None:
            self.active_since = now
        return may_lead(self.active_since, now, self.handover_seconds)
