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
    old, new = Leadership("old", 5, handover, 20), Leadership("new", 9, handover, 20)

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
    handover = handover_seconds(RESYNC, 20)  # 21 s; reads every RESYNC
    alone = Leadership("me", 5, handover, 20)
    dead_leader = {"me": peer(5, 0), "dead": peer(9, 30)}  # the dead leader's record: expired
    assert [alone.leads(dead_leader, NOW, at) for at in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)] == [False] * 5 + [True]
    assert not alone.leads({"me": peer(5, 0), "other": peer(9, 0)}, NOW, 26.0)
    # Active again later, beside a live (outranked) replica: it waits again.
    standby = {"me": peer(5, 0), "other": peer(3, 0)}
    assert [alone.leads(standby, NOW, at) for at in (27.0, 32.0, 37.0, 42.0, 47.0, 48.0)] == [False] * 5 + [True]


LIFETIME = 8  # the test operators' --peering-lifetime


def test_after_an_outage_a_standby_that_sees_the_leader_expired_never_acts_beside_it() -> None:
    """An API server outage longer than the peering lifetime stops every renewal: afterwards the
    standby reads the live leader's record as expired. It must not act before the leader's next renewal
    (kopf renews within the lifetime) shows it alive again. Before the fix, a replica that saw no live
    peer acted at once, and both replicas created the same gangs (the fault soak, seed 1)."""
    standby = Leadership("standby", 5, handover_seconds(RESYNC, LIFETIME), LIFETIME)
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


def test_active_on_both_sides_of_an_outage_is_not_active_throughout() -> None:
    """The soak's seed 1 (session 6): replica 0 started first and read itself alone (the leader's record
    not written yet), then the API server went down for 17 s. Right after, the leader's record looked
    expired and replica 0, "active" since before the outage, acted at once beside the leader. A gap
    between reads longer than the lifetime restarts the hand-over."""
    resync = 1.0
    first = Leadership("first", 5, handover_seconds(resync, LIFETIME), LIFETIME)
    alone = {"first": peer(5, 0, LIFETIME)}
    assert not first.leads(alone, NOW, 0.0)
    assert not first.leads(alone, NOW + timedelta(seconds=1), 1.0)
    after = NOW + timedelta(seconds=19)  # reads failed from 2 s to 18 s; the leader renewed last at 2 s
    stale = {
        "first": peer(5, 0, LIFETIME),
        "leader": {**peer(9, 0, LIFETIME), "lastseen": (NOW + timedelta(seconds=2)).isoformat()},
    }
    assert not first.leads({**stale, "first": {**peer(5, 0, LIFETIME), "lastseen": after.isoformat()}}, after, 19.0)


def test_a_leader_keeps_leading_through_a_read_gap_shorter_than_the_lifetime() -> None:
    leader = Leadership("leader", 9, handover_seconds(1.0, LIFETIME), LIFETIME)
    for at in range(12):  # 1 s resyncs: leads from the hand-over (9 s) on
        leader.leads({"leader": peer(9, 0, LIFETIME)}, NOW, float(at))
    assert leader.leads({"leader": peer(9, 0, LIFETIME)}, NOW, 11.0)
    assert leader.leads({"leader": peer(9, 0, LIFETIME)}, NOW, 18.0)  # 7 s without a read: < the lifetime
    assert not leader.leads({"leader": peer(9, 0, LIFETIME)}, NOW, 27.0)  # 9 s: a life may lie in it
