"""The download machine driven event by event: an injected clock, no network, commands recorded."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from p2pdist.core import download as m
from p2pdist.core.download import Download, Reply, Request, Settings
from p2pdist.core.proofs import EPOCH_SHIFT

PIECE = 1 << 20


@dataclass(eq=False)
class FakePeer:
    peer: str
    pieces: set[int] = field(default_factory=set)
    limit: int = 2
    inflight: int = 0
    score: float = 0.0
    room: int = 1 << 16
    busy_until: float = 0.0
    bad_pieces: int = 0
    failures: int = 0


class View:
    def __init__(self, free: list[FakePeer]) -> None:
        self.free = free

    def __call__(self, index: int) -> list[FakePeer]:
        return [p for p in self.free if index in p.pieces]

    def reachable(self, pieces) -> list[int]:
        return [i for i in pieces if any(i in p.pieces for p in self.free)]


class Shell:
    """Records every command; ``peers`` are the neighbours a pass may use."""

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.commands: list[tuple] = []
        self.timers: list[float] = []
        self.woken = 0
        self.blocked = False
        self.ban_reasons: list[str] = []

    def wake(self) -> None:
        self.woken += 1

    def timer(self, at: float) -> None:
        self.timers.append(at)

    def holders(self, now: float):
        free = [p for p in self.peers if p.busy_until <= now and p.inflight < p.limit and p.score > -3]
        return View(free) if free else None

    def fetch_piece(self, req: Request) -> None:
        self.commands.append(("fetch", req.index, req.peer.peer, req))

    def start_origin(self, runs) -> None:
        self.commands.append(("origin", list(runs)))

    def announce(self) -> None:
        self.commands.append(("announce",))

    def stored(self, index: int, from_origin: bool, tell: int = m.TELL_HAVE) -> None:
        # A plain HAVE is recorded as before the offer outcomes existed; any other outcome with it.
        told = () if tell == m.TELL_HAVE else (tell,)
        self.commands.append(("stored", index, from_origin, *told))

    def offer(self, index: int) -> None:
        self.commands.append(("offer", index))

    def unoffer(self, index: int) -> None:
        self.commands.append(("unoffer", index))

    def complete(self) -> None:
        self.commands.append(("complete",))

    def went_direct(self, reason: str) -> None:
        self.commands.append(("direct", reason))

    def tracker_lost(self) -> None:
        self.commands.append(("lost",))

    def tracker_back(self) -> None:
        self.commands.append(("back",))

    def proved(self, index: int) -> None:
        self.commands.append(("proved", index))

    def lacks(self, peer, index: int) -> bool:
        held = index in peer.pieces
        peer.pieces.discard(index)
        return held

    def ban(self, peer, reason: str) -> None:
        self.commands.append(("ban", peer.peer))
        self.ban_reasons.append(reason)

    def abort(self, reason: str) -> None:
        self.commands.append(("abort", reason))

    def blocking(self, on: bool) -> None:
        self.blocked = on

    def take(self, kind: str | None = None) -> list[tuple]:
        """The commands since the last take (of one kind, if given), removed."""
        got = [c for c in self.commands if kind is None or c[0] == kind]
        self.commands = [c for c in self.commands if c not in got]
        return got


def offer(dl: Download, shell: Shell, *peers: FakePeer) -> None:
    """``peers`` are our neighbours from now on, their pieces held and every digest known."""
    shell.peers = list(peers)
    for p in peers:
        for i in p.pieces:
            dl.add_holder(i)
    for i in range(dl.count):
        dl.learn_digest(i)


def requests_to(name: str, pieces: int, limit: int, **machine_args) -> tuple[Download, Shell, FakePeer, list]:
    """A started download whose one neighbour ``name`` holds every piece; the first pass's requests."""
    dl, shell = machine(pieces, **machine_args)
    peer = FakePeer(name, set(range(pieces)), limit=limit)
    offer(dl, shell, peer)
    dl.start(0.0, Reply())
    dl.schedule(0.0)
    return dl, shell, peer, [c[3] for c in shell.take("fetch")]


def machine(pieces: int = 8, now: float = 0.0, budget_pieces: int = 4, direct: bool = False,
            **settings) -> tuple[Download, Shell]:
    shell = Shell()
    settings.setdefault("origin_concurrency", 4)
    settings.setdefault("stall_timeout", 20.0)
    settings.setdefault("interval_jitter", 0.0)  # exact announce times; test_intervals_are_jittered has it
    s = Settings(inflight_bytes=budget_pieces * PIECE, upload_slots=1, **settings)
    return Download(shell, s, PIECE, pieces * PIECE, now, random.Random(1), direct=direct), shell


def test_leases_become_origin_runs_and_their_digests_go_to_the_tracker_once():
    dl, shell = machine(8)
    dl.start(0.0, Reply(interval=1.0, leases=[(0, 2, 10.0), (4, 5, 10.0)]))
    assert dl.want_leases() == 3  # 4 streams + 1 spare, 2 queued
    dl.schedule(0.0)
    # The second lease is the spare: it waits for the stream to end instead of sharing the origin
    # with it (core.leases.SPARE_LEASES).
    assert shell.take("origin") == [("origin", [(0, 2)])]
    assert dl.origin_active == 1 and dl.want_leases() == 3
    dl.piece_stored(0, True, 0.1)
    assert shell.take("stored") == [("stored", 0, True)]
    assert dl.report == [0]
    # The announcer waits up to its first interval for something to say: a digest is.
    assert shell.take("announce") == [("announce",)]
    digests, _pos, want, streaming = dl.announce_fields()
    assert digests == [0] and want == 3 and not streaming
    dl.on_reply(1.05, Reply(interval=1.0, digest_pos=7, leases=[(0, 2, 9.0), (4, 5, 9.0)]))
    assert dl.report == [] and dl.digest_pos == 7
    # Every reply lists the leases being streamed: they are not started twice.
    dl.schedule(1.05)
    assert shell.take("origin") == []
    dl.piece_stored(1, True, 1.1)
    dl.origin_done([(0, 2)], 1.1)
    dl.schedule(1.1)
    assert shell.take("origin") == [("origin", [(4, 5)])]  # the spare goes on at once


def test_a_lease_the_tracker_no_longer_lists_is_dropped_before_it_starts():
    dl, shell = machine(16, origin_concurrency=1)
    dl.start(0.0, Reply(leases=[(0, 2, 10.0), (2, 4, 10.0)]))
    dl.schedule(0.0)
    assert shell.take("origin") == [("origin", [(0, 2)])]
    dl.tick(1.0)
    dl.announce_fields()
    dl.on_reply(1.0, Reply(leases=[(0, 2, 5.0)]))  # (2, 4) expired and went to another node
    dl.origin_done([(0, 2)], 1.1)  # it stopped early; the lease is still ours, (2, 4) is not
    dl.schedule(1.1)
    assert shell.take("origin") == [("origin", [(0, 2)])]


def test_held_pieces_of_a_lease_are_reported_once_and_again_after_a_tracker_reset():
    dl, shell = machine(4, origin_concurrency=1)
    for i in (0, 1):
        dl.mark_had(i)  # resumed from disk
    dl.start(0.0, Reply(leases=[(0, 4, 10.0)]))
    dl.schedule(0.0)
    assert shell.take("origin") == [("origin", [(2, 4)])]  # only the missing run leaves the origin
    assert dl.report == [0, 1]
    dl.tick(1.0)
    dl.announce_fields()
    dl.on_reply(1.0, Reply(leases=[(0, 4, 10.0)]))
    dl.origin_done([(2, 4)], 1.01)  # it stopped early: the lease is queued again
    dl.schedule(1.01)
    assert dl.report == []  # listed again, not reported again
    dl.origin_done([], 1.02)  # (the run the pass just started, over)
    dl.tick(1.1)
    dl.tick(2.2)
    dl.announce_fields()
    dl.on_reply(2.2, Reply(leases=[(0, 4, 10.0)], reset=True))  # the tracker forgot every digest
    dl.schedule(2.2)
    assert dl.report == [0, 1]


def test_rarest_first_within_the_byte_budget_and_the_peers_request_limits():
    dl, shell = machine(8, budget_pieces=3)
    a = FakePeer("a", {0, 1, 2, 3}, limit=2)
    b = FakePeer("b", {0, 1, 2}, limit=2)
    c = FakePeer("c", {0, 1}, limit=2)
    offer(dl, shell, a, b, c)
    dl.start(0.0, Reply())
    dl.schedule(0.0)
    fetched = shell.take("fetch")
    assert len(fetched) == 3  # the budget: 3 pieces
    chosen = sorted(i for _, i, _, _ in fetched)
    assert chosen[1:] == [2, 3] and chosen[0] in (0, 1)  # the rarest (one holder, then two) first
    assert all(p.inflight <= p.limit for p in shell.peers)
    assert sum(p.inflight for p in shell.peers) == 3 and dl.inflight_bytes == 3 * PIECE
    # The budget is spent: another pass places nothing.
    dl.schedule(0.0)
    assert shell.take("fetch") == []


def test_a_piece_is_offered_at_its_first_checked_block_while_its_request_is_open_and_not_after():
    dl, shell, _peer, reqs = requests_to("p", 4, limit=4, budget_pieces=4)
    dl.piece_arriving(reqs[0])
    assert shell.take("offer") == [("offer", reqs[0].index)]  # the neighbours may ask for it now
    dl.request_done(reqs[1], m.FAILED, 0.1)
    dl.piece_arriving(reqs[1])  # the request is over: nothing arrives to pass on
    dl.request_done(reqs[2], m.DONE, 0.1)
    dl.piece_arriving(reqs[2])  # stored: its HAVE went out with ``stored``
    assert shell.take("offer") == []
    assert shell.take("stored") == [("stored", reqs[2].index, False)]
    # Switched off (store and forward), a piece is passed on only once stored.
    dl, shell, _peer, reqs = requests_to("p", 4, limit=4, budget_pieces=4, cut_through=False)
    dl.piece_arriving(reqs[0])
    assert shell.take("offer") == []


def test_an_offered_piece_is_not_heard_of_twice_and_a_failed_offer_is_taken_back():
    epoch = 5 << EPOCH_SHIFT
    dl, shell = machine(4, budget_pieces=4)
    peer = FakePeer("p", set(range(4)), limit=4)
    offer(dl, shell, peer)
    dl.start(0.0, Reply(digest_pos=epoch))
    dl.proofs_checked([0], 0.0)  # piece 0's proof is held before it arrives
    dl.schedule(0.0)
    reqs = {c[3].index: c[3] for c in shell.take("fetch")}
    assert sorted(reqs) == [0, 1, 2, 3]
    for i in range(4):
        dl.piece_arriving(reqs[i])
    assert shell.take("offer") == [("offer", i) for i in range(4)]
    assert all(dl.offering(i) for i in range(4))
    dl.proofs_checked([1], 0.1)  # piece 1's proof comes after its offer's HAVE went out without it
    assert shell.take("proved") == []  # not held yet: its proof goes out when it is stored
    for i in (0, 1, 2):
        dl.request_done(reqs[i], m.DONE, 0.2)
    # Heard of at the offer: piece 0 with its proof (nothing more), piece 1 without (the proof
    # alone now), piece 2 never proved (nothing more).
    assert shell.take("stored") == [("stored", 0, False, m.TELL_NOTHING), ("stored", 1, False, m.TELL_PROOF),
                                    ("stored", 2, False, m.TELL_NOTHING)]
    assert not any(dl.offering(i) for i in (0, 1, 2))
    # Piece 3's request fails: the offer is taken back, and the piece is asked for again.
    dl.request_done(reqs[3], m.FAILED, 0.3)
    assert shell.take("unoffer") == [("unoffer", 3)] and not dl.offering(3)
    dl.schedule(0.3)
    (again,) = [c[3] for c in shell.take("fetch")]
    assert again.index == 3
    dl.piece_arriving(again)
    assert shell.take("offer") == [("offer", 3)]
    # A copy stored meanwhile (the origin's): the neighbours heard of the piece already, and the
    # request failing after it takes nothing back.
    dl.piece_stored(3, True, 0.4)
    assert shell.take("stored") == [("stored", 3, True, m.TELL_NOTHING)]
    dl.request_done(again, m.FAILED, 0.5)
    assert shell.take("unoffer") == [] and dl.has(3)


def test_a_proof_an_offer_carried_is_void_in_a_new_epoch_and_the_new_one_goes_out_when_stored():
    dl, shell = machine(2, budget_pieces=2)
    offer(dl, shell, FakePeer("p", {0, 1}, limit=2))
    dl.start(0.0, Reply(interval=1.0, digest_pos=5 << EPOCH_SHIFT))
    dl.proofs_checked([0], 0.0)
    dl.schedule(0.0)
    reqs = {c[3].index: c[3] for c in shell.take("fetch")}
    dl.piece_arriving(reqs[0])  # its HAVE carries the epoch-5 proof
    assert shell.take("offer") == [("offer", 0)]
    # The tracker's log started over (epoch 6) and proves the piece again.
    dl.tick(1.0)
    assert shell.take("announce")
    dl.announce_fields()
    dl.on_reply(1.0, Reply(reset=True, proved=[0], digest_pos=6 << EPOCH_SHIFT))
    assert dl.proved(0)
    dl.request_done(reqs[0], m.DONE, 1.1)
    assert shell.take("stored") == [("stored", 0, False, m.TELL_PROOF)]  # the epoch-6 proof


def test_deadlines_follow_the_pieces_that_arrived():
    dl, _shell, _peer, reqs = requests_to("p", 8, limit=8, budget_pieces=8)
    # Before any piece came in, only the configured cap bounds a request.
    assert dl.deadline(reqs[0]) == 0.0 + dl.piece_timeout
    dl.request_done(reqs[0], m.DONE, 0.05)  # pieces take 50 ms here
    assert dl.deadline(reqs[1]) == pytest.approx(m.MIN_PIECE_TIMEOUT)  # 8 x 50 ms is under the floor
    for k, req in enumerate(reqs[1:4], start=1):
        dl.request_done(req, m.DONE, 0.5 * k)  # slower and slower: the deadline grows with them
    assert m.MIN_PIECE_TIMEOUT < dl.deadline(reqs[4]) < dl.piece_timeout
    assert dl.deadline(reqs[4]) == pytest.approx(m.TIMEOUT_FACTOR * dl.piece_time)


def test_a_peer_that_keeps_failing_is_banned_and_a_delivered_piece_forgives():
    dl, shell, peer, reqs = requests_to("silent", 16, limit=16, budget_pieces=16)
    for req in reqs[: m.BAN_AFTER_FAILURES - 1]:
        dl.request_done(req, m.TIMEOUT, 2.0)
    dl.request_done(reqs[m.BAN_AFTER_FAILURES - 1], m.DONE, 2.0)  # one piece came: not silent after all
    assert peer.failures == 0
    for req in reqs[m.BAN_AFTER_FAILURES : 2 * m.BAN_AFTER_FAILURES - 1]:
        dl.request_done(req, m.LACKS, 3.0)  # 404s for pieces it advertised count the same
    assert shell.take("ban") == []
    dl.request_done(reqs[2 * m.BAN_AFTER_FAILURES - 1], m.TIMEOUT, 3.0)
    assert shell.take("ban") == [("ban", "silent")] and shell.ban_reasons == ["timeouts"]


def holders(dl: Download, i: int) -> int:
    return dl.cells[dl.base + i] & m.AVAIL


def test_a_404_takes_the_peer_off_the_piece_s_holders_once_and_counts_as_a_failure():
    dl, shell = machine(1)
    offer(dl, shell, *[FakePeer(name, {0}, limit=1) for name in "abc"])
    dl.start(0.0, Reply())
    dl.schedule(0.0)
    [(_, _, first, req)] = shell.take("fetch")
    assert holders(dl, 0) == 3
    dl.request_done(req, m.LACKS, 1.0)
    assert 0 not in req.peer.pieces and holders(dl, 0) == 2
    assert req.peer.failures == 1 and req.peer.score == -m.FAILURE_PENALTY
    dl.schedule(1.0)
    [(_, _, second, req)] = shell.take("fetch")
    assert second != first  # the piece goes to another holder
    # Its LOST of the piece came before its 404: the driver dropped it as a holder then, and the 404
    # drops nothing more (the third peer still counts).
    req.peer.pieces.discard(0)
    dl.drop_holder(0)
    dl.request_done(req, m.LACKS, 1.1)
    assert holders(dl, 0) == 1 and 0 in dl.fetchable and req.peer.failures == 1


def test_request_outcomes_score_back_off_and_ban_the_peer():
    dl, shell, bad, reqs = requests_to("bad", 8, limit=8, budget_pieces=8)
    assert len(reqs) == 8 and bad.inflight == 8
    dl.request_done(reqs[0], m.DONE, 1.0)
    assert shell.take("stored") == [("stored", reqs[0].index, False)] and bad.score == pytest.approx(0.1)
    dl.request_done(reqs[1], m.BUSY, 1.0)
    assert bad.busy_until == 1.0 + m.BUSY_BACKOFF
    dl.request_done(reqs[2], m.FAILED, 1.0)
    assert bad.score == pytest.approx(0.1 - m.FAILURE_PENALTY)
    dl.request_done(reqs[3], m.BAD, 1.0)
    assert shell.take("ban") == []
    dl.request_done(reqs[4], m.BAD, 1.0)
    assert shell.take("ban") == [("ban", "bad")]
    assert bad.inflight == 3 and dl.inflight_bytes == 3 * PIECE
    # A request we cancelled (the download ended) costs the peer nothing.
    score = bad.score
    dl.request_done(reqs[5], m.CANCELLED, 1.0)
    assert bad.score == score and bad.inflight == 2
    # A request closed twice (a late answer) changes nothing.
    dl.request_done(reqs[4], m.DONE, 1.1)
    assert bad.inflight == 2 and not dl.has(reqs[4].index)
    # The failed pieces are fetchable again; the busy peer is skipped until its back-off ends.
    assert {reqs[i].index for i in (1, 2, 3, 4, 5)} <= dl.fetchable
    dl.schedule(1.2)
    assert shell.take("fetch") == []
    assert [r.index for r in dl.requests.to(bad)] == [r.index for r in reqs[6:]]


def test_a_blocked_pass_looks_again_when_a_holder_frees_a_slot_or_the_loop_timer_fires():
    dl, shell, _p, (req,) = requests_to("p", 4, limit=1)
    assert shell.blocked and dl.blocked == dl.fetchable == {0, 1, 2, 3} - {req.index}
    assert 0.0 + m.LOOP_TIMEOUT in shell.timers
    woken = shell.woken
    dl.schedule(0.0)
    dl.add_holder(next(iter(dl.blocked)), free=True)  # a second holder with a free slot
    assert shell.woken == woken + 1
    dl.request_done(req, m.DONE, 0.5)
    dl.schedule(0.5)
    assert len(shell.take("fetch")) == 1


def test_a_room_wakes_the_pass_only_for_a_neighbour_holding_a_blocked_piece():
    dl, shell, _p, (req,) = requests_to("p", 4, limit=1)
    woken = shell.woken
    dl.room_opened({req.index}.__contains__)  # holds only what is already in flight
    dl.room_opened(set().__contains__)  # holds nothing of ours
    assert shell.woken == woken and not dl.dirty
    dl.room_opened(set(dl.blocked).__contains__)
    assert shell.woken == woken + 1 and dl.dirty


def test_undigested_pieces_ask_the_tracker_and_become_fetchable_when_learnt():
    dl, shell = machine(4)
    shell.peers = [FakePeer("p", {0, 1})]
    dl.add_holder(0)
    dl.add_holder(1)
    dl.start(0.0, Reply())
    assert dl.undigested == {0, 1} and not dl.fetchable
    dl.tick(1.0)  # first interval
    assert shell.take("announce")
    dl.announce_fields()
    dl.on_reply(1.0, Reply(learned=[0, 1], digest_pos=2))
    assert dl.fetchable == {0, 1} and not dl.undigested
    dl.schedule(1.0)
    assert sorted(c[1] for c in shell.take("fetch")) == [0, 1]


def test_digests_a_neighbour_proves_make_its_pieces_fetchable_without_the_tracker():
    dl, shell = machine(4, stall_timeout=5.0)
    shell.peers = [FakePeer("p", {0, 1, 2})]
    for i in (0, 1, 2):
        dl.add_holder(i)
    dl.start(0.0, Reply())
    assert dl.undigested == {0, 1, 2} and not dl.fetchable
    dl.schedule(0.0)
    assert not shell.take("fetch")
    woken = shell.woken
    dl.proofs_checked([1, 2, 9, -1], 3.0)  # out of range: ignored
    assert dl.fetchable == {1, 2} and dl.undigested == {0}
    assert shell.woken == woken + 1 and dl.dirty and dl.last_progress == 3.0  # news: the stall clock starts over
    dl.schedule(3.0)
    assert sorted(c[1] for c in shell.take("fetch")) == [1, 2]
    woken = shell.woken
    dl.proofs_checked([1, 2], 4.0)  # known already: no pass, no progress
    assert shell.woken == woken and dl.last_progress == 3.0


def test_proofs_hold_in_their_epoch_and_a_held_piece_proved_late_is_handed_on():
    epoch = 5 << EPOCH_SHIFT
    dl, shell = machine(4)
    assert not dl.takes_proofs(0)  # before the tracker's first reply: no epoch, no proofs

    def answer(now: float, reply: Reply) -> None:
        """Our next announce (due 1 s after the last reply, and the spacing) and the tracker's ``reply``."""
        dl.tick(now)
        assert shell.take("announce")
        dl.announce_fields()
        dl.on_reply(now, reply)

    dl.start(0.0, Reply(interval=1.0, leases=[(0, 1, 10.0)], digest_pos=epoch))
    assert dl.proof_epoch == 5
    dl.schedule(0.0)
    dl.piece_stored(0, True, 0.1)  # ours from the origin: its HAVE goes out without a proof
    assert not dl.proved(0)
    # The reply proves our piece and another one: only the held one is handed on, once.
    answer(1.0, Reply(learned=[1], proved=[0, 1], digest_pos=epoch | 2))
    assert dl.proved(0) and dl.proved(1)
    assert shell.take("proved") == [("proved", 0)]
    answer(2.1, Reply(proved=[0], digest_pos=epoch | 2))
    assert shell.take("proved") == []
    # Another epoch (a corrupt reset, a tracker restart): the proofs held are void.
    answer(3.2, Reply(reset=True, digest_pos=6 << EPOCH_SHIFT))
    assert dl.proof_epoch == 6 and not dl.proved(0) and not dl.proved(1)
    assert dl.takes_proofs(6) and not dl.takes_proofs(5) and not dl.takes_proofs(0)
    dl.proofs_checked([1], 3.5)  # a neighbour's proof of the new epoch, checked by the driver
    assert dl.proved(1) and shell.take("proved") == []  # not held here: nothing to hand on


def test_the_announcer_waits_the_spacing_then_the_next_kick_or_the_interval():
    dl, shell = machine(4)
    dl.start(0.0, Reply(interval=1.0))
    dl.tick(0.5)
    assert shell.take("announce") == []
    dl.tick(1.0)
    assert shell.take("announce") == [("announce",)]
    dl.announce_fields()
    dl.on_reply(1.0, Reply(interval=3.0))
    dl.kick()
    assert shell.take("announce") == []  # within the spacing
    dl.tick(1.0 + m.ANNOUNCE_SPACING)
    assert shell.take("announce") == [("announce",)]  # the kick, right after the spacing
    dl.announce_fields()
    dl.on_reply(1.1, Reply(interval=3.0))
    dl.tick(1.2)
    dl.tick(4.0)
    assert shell.take("announce") == []
    dl.tick(4.2)
    assert shell.take("announce") == [("announce",)]  # the interval


def test_the_first_wait_is_a_loaded_tracker_s_interval_and_otherwise_the_first_second():
    # A loaded tracker (it spaces announces) hurries only the nodes fetching from the origin; a node
    # it does not waits its steady interval from the start: a fixed first second sent a whole flash
    # crowd back at once. An unloaded one gets the first second (a small swarm's leases and audits
    # go to whoever announces).
    dl, shell = machine(4)
    dl.start(0.0, Reply(interval=5.0, spacing=0.2))
    dl.tick(1.0)
    dl.tick(4.9)
    assert shell.take("announce") == []
    dl.tick(5.0)
    assert shell.take("announce") == [("announce",)]
    quiet, quiet_shell = machine(4)
    quiet.start(0.0, Reply(interval=5.0))
    quiet.tick(m.FIRST_INTERVAL)
    assert quiet_shell.take("announce") == [("announce",)]
    kicked, kicked_shell = machine(4)
    kicked.start(0.0, Reply(interval=5.0, spacing=0.2))
    kicked.kick()  # something to tell or ask meanwhile: the interval does not hold it back
    kicked.tick(0.2)
    assert kicked_shell.take("announce") == [("announce",)]


def test_intervals_are_jittered_so_a_crowd_that_started_together_does_not_come_back_together():
    def next_announces(seed: int) -> list[float]:
        dl = Download(Shell(), Settings(inflight_bytes=PIECE, upload_slots=1, origin_concurrency=1,
                                        stall_timeout=60.0), PIECE, 4 * PIECE, 0.0, random.Random(seed))
        dl.start(0.0, Reply(interval=5.0))
        first = dl.next_deadline()  # the first wait: FIRST_INTERVAL, jittered too
        dl.tick(first)
        dl.announce_fields()
        dl.on_reply(first, Reply(interval=5.0))
        return [first / m.FIRST_INTERVAL, (dl.next_deadline() - first - m.ANNOUNCE_SPACING) / 5.0]

    shares = [w for seed in range(40) for w in next_announces(seed)]  # of the wait asked for
    jitter = m.INTERVAL_JITTER
    assert all(1 - jitter <= w <= 1 for w in shares)  # never later than asked
    assert max(shares) - min(shares) > jitter * 0.8  # spread over most of the range, not one instant


def test_a_loaded_tracker_s_spacing_holds_back_kicked_announces():
    dl, shell = machine(4)
    dl.start(0.0, Reply(interval=1.0))
    dl.tick(1.0)
    assert shell.take("announce")
    dl.announce_fields()
    dl.on_reply(1.0, Reply(interval=3.0, spacing=0.8))  # the tracker's pacer asks for room
    dl.kick()
    dl.tick(1.0 + m.ANNOUNCE_SPACING)
    dl.tick(1.7)
    assert shell.take("announce") == []  # our own spacing is over, the tracker's is not
    dl.tick(1.8)
    assert shell.take("announce") == [("announce",)]
    dl.announce_fields()
    dl.on_reply(1.8, Reply(interval=3.0, spacing=0.01))  # less than ours: ours rules
    dl.kick()
    dl.tick(1.8 + m.ANNOUNCE_SPACING / 2)
    assert shell.take("announce") == []
    dl.tick(1.8 + m.ANNOUNCE_SPACING)
    assert shell.take("announce") == [("announce",)]


def test_a_lost_tracker_is_asked_again_less_often_and_rejoined_while_peers_deliver():
    dl, shell = machine(20, origin_concurrency=2)
    peer = FakePeer("p", {1, 2, 3})
    offer(dl, shell, peer)
    dl.start(0.0, Reply())
    dl.tick(1.0)
    assert shell.take("announce")
    waits = []
    now = 1.0
    for _ in range(5):
        dl.announce_failed(now)
        due = dl.next_deadline()
        waits.append(round(due - now, 3))
        dl.schedule(now)
        for _, _, _, req in shell.take("fetch"):
            dl.request_done(req, m.DONE, now)  # the neighbours keep delivering: no stall
        now = due
        dl.tick(now)
        assert shell.take("announce")
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]  # backing off, capped
    assert shell.take("lost") == [("lost",)] and shell.take("direct") == []
    dl.on_reply(now, Reply(leases=[(4, 8, 10.0)]))
    assert shell.take("back") == [("back",)]
    dl.schedule(now)
    assert shell.take("origin") == [("origin", [(4, 8)])]  # leases again: back in the swarm


def test_digests_to_report_wait_for_the_back_off_of_a_failed_announce():
    # Each verified origin piece kicks an announce (its digest to report). After a failure those
    # kicks went out at once: 20 failed announces a second per agent while the tracker was down.
    dl, shell = machine(8, origin_concurrency=2)
    dl.start(0.0, Reply(interval=1.0, leases=[(0, 8, 30.0)]))
    dl.schedule(0.0)
    dl.tick(1.0)
    assert shell.take("announce")
    dl.announce_fields()
    dl.announce_failed(1.0)
    for k, i in enumerate(range(4)):  # pieces land, 0.1 s apart, during the 0.5 s back-off
        now = 1.1 + 0.1 * k
        dl.piece_stored(i, True, now)
        dl.tick(now)
    assert shell.take("announce") == []
    assert dl.next_deadline() == pytest.approx(1.5)
    dl.tick(1.5)
    assert shell.take("announce") == [("announce",)]  # one, carrying all four digests
    assert dl.announce_fields()[0] == [0, 1, 2, 3]


def test_a_lost_tracker_and_no_progress_end_in_the_stall_fallback():
    dl, shell = machine(20, origin_concurrency=2)
    dl.mark_had(0)
    dl.start(0.0, Reply())
    dl.tick(1.0)
    assert shell.take("announce")
    now = 1.0
    while not shell.take("direct"):
        dl.announce_failed(now)
        now = dl.next_deadline()
        dl.tick(now)
        shell.take("announce")
    assert now >= dl.settings.stall_timeout
    dl.schedule(now)
    # Runs over the missing pieces, two streams at once; guided: at most direct_run_pieces, and at
    # most half (two streams) of the pieces left, so the last runs are short.
    assert shell.take("origin") == [("origin", [(1, 8)]), ("origin", [(8, 14)])]
    assert list(dl.leases) == [(14, 17), (17, 19), (19, 20)]
    dl.tick(10.0)
    assert shell.take("announce") == []  # direct: the announcer is off
    runs = list(dl.leases)
    dl.on_reply(10.0, Reply(leases=[]))  # a late reply must not empty the direct queue
    assert dl.leases == runs and runs


def test_a_lease_of_pieces_reported_already_is_reported_again_and_is_no_progress():
    # A tracker that keeps listing a lease whose pieces we fetched and reported has not taken our
    # report: it is sent again. And that lease is no origin work: with nothing else moving, the
    # stall clock still runs (a tracker that kept listing one left a download waiting for good).
    dl, shell = machine(4, origin_concurrency=1, stall_timeout=20.0)
    dl.start(0.0, Reply(interval=1.0, leases=[(0, 1, 10.0)]))
    dl.schedule(0.0)
    assert shell.take("origin") == [("origin", [(0, 1)])]
    dl.piece_stored(0, True, 0.5)
    dl.origin_done([(0, 1)], 0.5)
    assert dl.announce_fields()[0] == [0]
    dl.on_reply(0.6, Reply(interval=1.0, leases=[(0, 1, 9.0)]))  # still listed: the report was not taken
    assert dl.report == [0] and shell.take("announce")
    dl.schedule(0.6)
    assert shell.take("origin") == []  # nothing to fetch
    now = 0.6
    while not shell.take("direct"):
        now += 1.0
        dl.tick(now)
        if shell.take("announce"):
            assert dl.announce_fields()[0] == [0]  # once per reply that lists it, not piled up
            dl.on_reply(now, Reply(interval=1.0, leases=[(0, 1, 9.0)]))
        assert now < 30.0, "the stall fallback never came"
    assert 20.5 <= now <= 21.6  # the stall timeout after the last real progress (the stored piece)


def test_pieces_no_neighbour_holds_are_named_orphans_only_after_a_while_without_progress():
    dl, shell = machine(6, origin_concurrency=1)
    dl.start(0.0, Reply(interval=1.0, leases=[(4, 5, 10.0)]))
    offer(dl, shell, FakePeer("p", {0}))  # a neighbour holds piece 0
    dl.schedule(0.0)
    dl.piece_stored(1, False, 0.2)  # progress
    assert dl.orphans(0.2 + m.ORPHAN_AFTER - 0.01) == []  # not long enough without progress
    # Not named: 0 (a neighbour holds it), 1 (had here), 4 (our own lease, on its way).
    assert dl.orphans(0.2 + m.ORPHAN_AFTER) == [2, 3, 5]
    dl.add_holder(2, now=4.0)  # a HAVE: 2 is settled, the others are still named, progress or not
    assert dl.orphans(4.1) == [3, 5]
    dl.add_holder(3, now=4.2)
    dl.add_holder(5, now=4.2)
    assert dl.orphans(4.3) == [] and not dl.orphaned
    dl.drop_holder(5)  # its holder left: a fresh orphan waits for the next quiet spell
    assert dl.orphans(4.3) == [] and dl.orphans(4.2 + m.ORPHAN_AFTER) == [5]


def test_the_orphans_of_a_large_blob_are_named_in_turn_without_a_quiet_spell_each():
    dl, _shell = machine(200, origin_concurrency=1)
    dl.start(0.0, Reply(interval=1.0))
    first = dl.orphans(m.ORPHAN_AFTER)
    assert first == list(range(m.MAX_ORPHANS))
    # The tracker leases those again (progress): the next announce names the next ones at once.
    dl.tick(m.ORPHAN_AFTER)
    dl.announce_fields()
    dl.on_reply(m.ORPHAN_AFTER + 0.1, Reply(interval=1.0, leases=[(0, m.MAX_ORPHANS, 10.0)]))
    assert dl.orphans(m.ORPHAN_AFTER + 0.2) == list(range(m.MAX_ORPHANS, 2 * m.MAX_ORPHANS))


def test_no_progress_for_the_stall_timeout_goes_direct_but_not_while_the_origin_streams():
    dl, shell = machine(4, stall_timeout=20.0)
    dl.start(0.0, Reply(leases=[(0, 1, 10.0)]))
    dl.schedule(0.0)
    assert shell.take("origin") == [("origin", [(0, 1)])]
    dl.tick(20.0)
    assert shell.take("direct") == []  # an origin stream is running
    dl.origin_done([(0, 1)], 20.5)  # it stopped without a byte
    dl.tick(21.0)
    assert shell.take("direct") == [("direct", m.STALL)]
    dl.schedule(21.0)
    assert shell.take("origin") == [("origin", [(0, 1)]), ("origin", [(1, 2)]), ("origin", [(2, 3)]),
                                    ("origin", [(3, 4)])]


def test_a_heard_have_is_progress_for_the_stall_clock():
    dl, shell = machine(4, stall_timeout=20.0)
    dl.start(0.0, Reply())
    dl.add_holder(1, now=15.0)
    dl.tick(20.0)
    assert shell.take("direct") == []
    dl.tick(35.0)
    assert shell.take("direct") == [("direct", m.STALL)]


def test_the_last_piece_completes_the_download_once_and_an_origin_failure_aborts():
    dl, shell = machine(2)
    dl.start(0.0, Reply(leases=[(0, 2, 10.0)]))
    dl.schedule(0.0)
    dl.piece_stored(0, True, 0.1)
    assert shell.take("complete") == []
    dl.piece_stored(1, True, 0.2)
    dl.piece_stored(1, True, 0.2)
    assert shell.take("complete") == [("complete",)]
    shell.take()
    dl.tick(5.0)
    assert shell.take("announce") == []  # done: nothing more to say

    dl, shell = machine(2)
    dl.start(0.0, Reply(leases=[(0, 2, 10.0)]))
    dl.schedule(0.0)
    dl.origin_failed([(0, 2)], "origin 500", 0.3)
    assert shell.take("abort") == [("abort", "origin 500")]


def test_a_streaming_reader_gets_its_next_piece_in_the_window():
    dl, shell = machine(64, budget_pieces=1)
    p = FakePeer("p", set(range(64)), limit=4)
    offer(dl, shell, p)
    for i in range(20):
        dl.add_holder(i)  # the first pieces are the commonest: rarest-first would leave them last
    dl.follow(1, 10, 0.0)
    dl.start(0.0, Reply())
    dl.schedule(0.0)
    assert [c[1] for c in shell.take("fetch")] == [10]
    dl.unfollow(1)
    assert dl.cursor is None


def test_a_direct_download_with_a_reader_opens_origin_streams_as_the_reader_waits():
    # 128 pieces, direct (no tracker): runs of 8 queued for 4 streams; a reader follows from the start.
    dl, shell = machine(128, origin_concurrency=4, direct=True)
    dl.follow(7, 0, 0.0)
    dl.start(0.0, None)
    dl.schedule(0.0)
    # One stream while the reader keeps up; it stands for the other three: their runs, one request.
    assert shell.take("origin") == [("origin", [(0, 32)])]
    now = 0.05
    dl.piece_stored(0, True, now)  # the reader waited 0.05 s for the first piece
    for i in range(1, 32):  # then the stream stays ahead: each piece is here before the reader asks
        dl.piece_stored(i, True, now + 0.01)
        now += 0.02
        dl.follow(7, i, now)
        dl.schedule(now)
    dl.origin_done([(0, 32)], now)
    dl.schedule(now)
    assert shell.take("origin") == [("origin", [(32, 64)])]
    assert dl.paced() == 1 and dl.reader_wait == pytest.approx(0.05)
    # The origin slows: the reader asks for each piece 0.03 s before it lands. Another stream once
    # it waited PACE_WAIT in all, then one per PACE_WAIT more, up to origin_concurrency; each
    # stands for fewer streams not open, so it takes fewer runs.
    opened = []
    for i in range(32, 48):
        dl.follow(7, i, now)
        now += 0.03
        dl.piece_stored(i, True, now)
        dl.schedule(now)
        opened += [runs for _, runs in shell.take("origin")]
    assert dl.reader_wait == pytest.approx(0.05 + 16 * 0.03)
    assert m.PACE_WAIT == 0.1 and dl.paced() == 4  # waits of 0.1, 0.2, 0.3: 3 streams more
    assert opened == [[(64, 80)], [(80, 88)], [(88, 96)]]


def test_without_a_reader_or_with_leases_every_origin_stream_starts_at_once():
    dl, shell = machine(64, origin_concurrency=4)
    dl.start(0.0, None)  # direct, nobody reading: a fetch
    dl.schedule(0.0)
    assert len(shell.take("origin")) == 4
    dl, shell = machine(64, origin_concurrency=4)
    dl.follow(7, 0, 0.0)  # a reader, but the tracker leases the pieces: the swarm waits for them
    dl.start(0.0, Reply(leases=[(0, 8, 10.0), (8, 16, 10.0), (16, 24, 10.0)]))
    dl.schedule(0.0)
    assert len(shell.take("origin")) == 2  # and the third, the spare, when one of them ends
    # A reader that leaves takes its pace with it.
    dl, shell = machine(64, origin_concurrency=4)
    dl.follow(7, 0, 0.0)
    dl.start(0.0, None)
    dl.schedule(0.0)
    assert len(shell.take("origin")) == 1
    dl.unfollow(7)
    dl.schedule(0.0)
    assert len(shell.take("origin")) == 3
