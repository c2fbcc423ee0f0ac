"""Which replica may act: kopf's peering rule, and the hand-over wait that keeps two replicas from
deciding at once (`sft_operator.leadership`)."""

from datetime import timedelta

import pytest

from sft_operator.leadership import HANDOVER_MARGIN_SECONDS, Leadership, is_active, live_peer_priorities, may_lead
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


def test_a_hand_over_from_a_live_replica_waits_out_its_resync_period() -> None:
    # Taking over from a live replica (it has not paused yet): not before handover_seconds.
    assert not may_lead(100.0, 105.0, 6.0)
    assert may_lead(100.0, 106.0, 6.0)
    # No other replica alive when it became active: at once. Not active: never.
    assert may_lead(float("-inf"), 0.0, 6.0)
    assert not may_lead(None, 1e9, 6.0)


RESYNC = 5.0  # both replicas' --resync-seconds


def acting_times(joined: float) -> tuple[list[float], list[float]]:
    """A leader ("old", priority 5) resyncs at 0, 5, 10, ...; a newcomer ("new", priority 9) writes its
    peering record `joined` seconds in, between two of the leader's resyncs, and resyncs every RESYNC
    from then on. Each replica asks `leads()` at its own resyncs and acts until its next one. Returns the
    times at which each one's answer was yes."""
    handover = RESYNC + HANDOVER_MARGIN_SECONDS
    old, new = Leadership("old", 5, handover), Leadership("new", 9, handover)

    def record(at: float) -> dict:
        wall = NOW + timedelta(seconds=at)
        peers = {"old": {"priority": 5, "lifetime": 20, "lastseen": wall.isoformat()}}
        if at >= joined:
            peers["new"] = {"priority": 9, "lifetime": 20, "lastseen": wall.isoformat()}
        return peers

    old_acts = [at for at in (RESYNC * i for i in range(8)) if old.leads(record(at), NOW + timedelta(seconds=at), at)]
    new_acts = [
        at for at in (joined + RESYNC * i for i in range(8)) if new.leads(record(at), NOW + timedelta(seconds=at), at)
    ]
    return old_acts, new_acts


@pytest.mark.parametrize("joined", [0.1, 2.5, 4.9])
def test_a_newcomer_between_two_resyncs_waits_until_the_leader_has_paused(joined: float) -> None:
    old_acts, new_acts = acting_times(joined)
    assert old_acts == [0.0]  # the leader acts alone, then sees the newcomer at its next resync and pauses
    assert new_acts, "the newcomer of a higher priority takes over"
    old_stops = old_acts[-1] + RESYNC  # the leader's decision at 0 holds until its next resync
    assert new_acts[0] > old_stops  # never two replicas acting at once
    assert new_acts[0] - joined >= RESYNC + HANDOVER_MARGIN_SECONDS  # not during the hand-over margin
    assert new_acts == [at for at in (joined + RESYNC * i for i in range(8)) if at >= new_acts[0]]  # then always


def test_a_replica_alone_acts_at_once_and_one_outranked_stops_at_once() -> None:
    alone = Leadership("me", 5, RESYNC + HANDOVER_MARGIN_SECONDS)
    assert alone.leads({"me": peer(5, 0)}, NOW, 0.0)
    assert not alone.leads({"me": peer(5, 0), "other": peer(9, 0)}, NOW, 1.0)
    # Active again later, beside a live (outranked) replica: a hand-over, so it waits.
    assert not alone.leads({"me": peer(5, 0), "other": peer(3, 0)}, NOW, 2.0)
    assert alone.leads({"me": peer(5, 0), "other": peer(3, 0)}, NOW, 2.0 + RESYNC + HANDOVER_MARGIN_SECONDS)
