"""Which replica may act: kopf's peering rule, and the hand-over wait that keeps two replicas from
deciding at once (`sft_operator.leadership`)."""

from datetime import timedelta

import pytest

from sft_operator.leadership import (
    HANDOVER_MARGIN_SECONDS,
    Leadership,
    handover_seconds,
    is_active,
    live_peer_priorities,
    may_lead,
)
from tests.builders import NOW


def peer(priority: int, seconds_ago: float, lifetime: int = 20) -> dict:
    seen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def test_peering_rule() -> None:
    assert is_active(None, "me", 5, NOW)
    assert is_active({"me": peer(5, 0), "other": peer(3, 0)}, "me", 5, NOW)
    assert not is_active({"me": peer(5, 0), "other": peer(7, 0)}, "me", 5, NOW)
    assert not is_active({"other": peer(5, 0)}, "me", 5, NOW)  # same priority: kopf pauses both
    assert is_active({"other": peer(9, 60)}, "me", 5, NOW)  # a dead peer does not count


def test_live_peers_are_the_others_seen_within_their_lifetime() -> None:
    peers = {"me": peer(5, 0), "old": peer(9, 30), "standby": peer(3, 1), "new": {"priority": 4}}
    assert live_peer_priorities(peers, "me", NOW) == [3]  # never seen yet: not alive either


def test_a_replica_that_became_active_waits_out_the_hand_over() -> None:
    assert not may_lead(100.0, 105.0, 6.0)
    assert may_lead(100.0, 106.0, 6.0)
    assert not may_lead(None, 1e9, 6.0)  # not active: never
    assert handover_seconds(resync_seconds=5, peering_lifetime=20) == 20 + HANDOVER_MARGIN_SECONDS
    assert handover_seconds(resync_seconds=30, peering_lifetime=20) == 30 + HANDOVER_MARGIN_SECONDS


RESYNC = 5.0  # both replicas' --resync-seconds


def acting_times(joined: float) -> tuple[list[float], list[float]]:
    """A leader ("old", priority 5) resyncs every RESYNC since -30 s (so it leads at 0); a newcomer ("new", priority 9) writes its
    peering record `joined` seconds in, between two of the leader's resyncs, and resyncs every RESYNC
    from then on. Each replica asks `leads()` at its own resyncs and acts until its next one. Returns the
    times at which each one's answer was yes."""
    handover = handover_seconds(RESYNC, 20)
    old, new = Leadership("old", 5, handover), Leadership("new", 9, handover)

    def record(at: float) -> dict:
        wall = NOW + timedelta(seconds=at)
        peers = {"old": {"priority": 5, "lifetime": 20, "lastseen": wall.isoformat()}}
        if at >= joined:
            peers["new"] = {"priority": 9, "lifetime": 20, "lastseen": wall.isoformat()}
        return peers

    old_resyncs = (RESYNC * i for i in range(-6, 12))
    old_acts = [at for at in old_resyncs if old.leads(record(at), NOW + timedelta(seconds=at), at)]
    new_resyncs = (joined + RESYNC * i for i in range(12))
    new_acts = [at for at in new_resyncs if new.leads(record(at), NOW + timedelta(seconds=at), at)]
    return old_acts, new_acts


@pytest.mark.parametrize("joined", [0.1, 2.5, 4.9])
def test_a_newcomer_between_two_resyncs_waits_until_the_leader_has_paused(joined: float) -> None:
    old_acts, new_acts = acting_times(joined)
    assert old_acts[-1] == 0.0  # the leader acts alone, then sees the newcomer at its next resync and pauses
    assert new_acts, "the newcomer of a higher priority takes over"
    old_stops = old_acts[-1] + RESYNC  # the leader's decision at 0 holds until its next resync
    assert new_acts[0] > old_stops  # never two replicas acting at once
    assert new_acts[0] - joined >= handover_seconds(RESYNC, 20)  # not during the hand-over
    assert new_acts == [at for at in (joined + RESYNC * i for i in range(12)) if at >= new_acts[0]]  # then always


def test_a_replica_alone_acts_after_the_hand_over_and_one_outranked_stops_at_once() -> None:
    handover = handover_seconds(RESYNC, 20)
    alone = Leadership("me", 5, handover)
    assert not alone.leads({"me": peer(5, 0), "dead": peer(9, 30)}, NOW, 0.0)  # the dead leader's record: expired
    assert alone.leads({"me": peer(5, 0), "dead": peer(9, 30)}, NOW, handover)
    assert not alone.leads({"me": peer(5, 0), "other": peer(9, 0)}, NOW, handover + 1)
    # Active again later, beside a live (outranked) replica: it waits again.
    assert not alone.leads({"me": peer(5, 0), "other": peer(3, 0)}, NOW, handover + 2)
    assert alone.leads({"me": peer(5, 0), "other": peer(3, 0)}, NOW, 2 * handover + 2)


LIFETIME = 8  # the test operators' --peering-lifetime


def test_after_an_outage_a_standby_that_sees_the_leader_expired_never_acts_beside_it() -> None:
    """An API server outage longer than the peering lifetime stops every renewal: afterwards the
    standby reads the live leader's record as expired. It must not act before the leader's next renewal
    (kopf renews within the lifetime) shows it alive again. Before the fix, a replica that saw no live
    peer acted at once, and both replicas created the same gangs (the fault soak, seed 1)."""
    standby = Leadership("standby", 5, handover_seconds(RESYNC, LIFETIME))
    assert not standby.leads({"leader": peer(9, 0, LIFETIME), "standby": peer(5, 0, LIFETIME)}, NOW, 0.0)
    back = 12.0  # the API server answers again; the last renewals are 12 s old
    renewed = back + LIFETIME - 1  # the leader's keep-alive comes within its lifetime
    for at in (back, back + RESYNC):  # the standby's resyncs before the renewal
        wall = NOW + timedelta(seconds=at)
        stale = {"leader": peer(9, at, LIFETIME), "standby": peer(5, at, LIFETIME)}
        assert not standby.leads(stale, wall, at), f"acted at {at} s beside a leader it could not see"
    for at in (renewed, renewed + RESYNC, renewed + 10 * RESYNC):
        wall = NOW + timedelta(seconds=at)
        fresh = {"leader": {**peer(9, 0, LIFETIME), "lastseen": wall.isoformat()}, "standby": peer(5, 0, LIFETIME)}
        assert not standby.leads(fresh, wall, at)
