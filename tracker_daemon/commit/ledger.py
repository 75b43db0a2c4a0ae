"""Per-client sequence bookkeeping (pure): which sequenced messages were received, which are
committed, and the failures to report at the client's next barrier.

Each client numbers its sequenced messages (DATA frames, artifacts) 1, 2, 3, ... A message is
*received* when the daemon has accepted it (and acks it), *done* once every record in it has been
committed to MLflow or has failed. ``received_upto``/``committed_upto`` are the highest seq such
that it and every lower seq are received/done. Barriers wait for ``committed_upto >= seq``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracker_client.protocol import Failure

__all__ = ["ClientBook", "Ledger", "Progress"]


@dataclass(frozen=True, slots=True)
class Progress:
    """What one ``settle`` finished: ``done`` — the message is now done (every record in it
    committed or failed), so its journal entry can be settled; ``moved`` — the client's
    ``committed_upto`` advanced, so its barriers may be released."""

    done: bool = False
    moved: bool = False


_NOTHING = Progress()


@dataclass(slots=True)
class ClientBook:
    client_id: str
    received_upto: int = 0
    floor: int = 0  # seqs <= floor that this daemon never received count as done
    committed_upto: int = 0
    received_above: set[int] = field(default_factory=set)
    remaining: dict[int, int] = field(default_factory=dict)  # seq -> records not yet settled
    done_above: set[int] = field(default_factory=set)
    failures: list[tuple[str | None, Failure]] = field(default_factory=list)  # (run_id, failure)

    @property
    def in_flight(self) -> int:
        return len(self.remaining)


class Ledger:
    """Pure bookkeeping: it calls nothing; ``accept``/``settle`` return what changed and the
    caller (settlement.py) acts on it."""

    def __init__(self) -> None:
        self._books: dict[str, ClientBook] = {}

    def book(self, client_id: str) -> ClientBook:
        b = self._books.get(client_id)
        if b is None:
            b = self._books[client_id] = ClientBook(client_id)
        return b

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._books

    def floor(self, client_id: str, seq: int) -> None:
        """The client says every seq <= ``seq`` was acked by a daemon (possibly an earlier run of
        this one). Seqs up to there that this daemon never received are treated as done; ones it
        holds keep their real state (acked is not committed). O(messages held), whatever ``seq``."""
        b = self.book(client_id)
        if seq <= b.received_upto:
            return
        b.floor = max(b.floor, seq)
        b.received_upto = seq
        b.received_above = {s for s in b.received_above if s > seq}
        self._advance_received(b)
        self._advance_committed(b)

    def is_new(self, client_id: str, seq: int) -> bool:
        b = self._books.get(client_id)
        return seq >= 1 and (b is None or not (seq <= b.received_upto or seq in b.received_above))

    def accept(self, client_id: str, seq: int, count: int) -> bool:
        """Register message ``seq`` holding ``count`` records. False if it is a duplicate. A
        message of zero records is done at once (the caller settles its journal entry)."""
        b = self.book(client_id)
        if seq <= b.received_upto or seq in b.received_above:
            return False
        if seq == b.received_upto + 1:
            b.received_upto = seq
            self._advance_received(b)
        else:
            b.received_above.add(seq)
        if count > 0:
            b.remaining[seq] = count
        else:
            self._done(b, seq)
        return True

    def settle(self, client_id: str, seq: int, n: int = 1) -> Progress:
        """``n`` records of ``seq`` are committed or failed; what that finished."""
        b = self._books.get(client_id)
        if b is None or seq not in b.remaining:
            return _NOTHING
        left = b.remaining[seq] - n
        if left > 0:
            b.remaining[seq] = left
            return _NOTHING
        del b.remaining[seq]
        before = b.committed_upto
        self._done(b, seq)
        return Progress(done=True, moved=b.committed_upto != before)

    def fail(self, client_id: str, run_id: str | None, failure: Failure) -> None:
        self.book(client_id).failures.append((run_id, failure))

    def take_failures(self, client_id: str, run_id: str | None = None) -> list[Failure]:
        """Failures to report at a barrier: all of them, or those of one run."""
        b = self._books.get(client_id)
        if b is None or not b.failures:
            return []
        if run_id is None:
            out = [f for _, f in b.failures]
            b.failures.clear()
            return out
        out = [f for r, f in b.failures if r == run_id]
        b.failures = [(r, f) for r, f in b.failures if r != run_id]
        return out

    def received_upto(self, client_id: str) -> int:
        b = self._books.get(client_id)
        return 0 if b is None else b.received_upto

    def committed_upto(self, client_id: str) -> int:
        b = self._books.get(client_id)
        return 0 if b is None else b.committed_upto

    def clients(self) -> list[str]:
        return list(self._books)

    @staticmethod
    def _advance_received(b: ClientBook) -> None:
        while b.received_above and b.received_upto + 1 in b.received_above:
            b.received_upto += 1
            b.received_above.discard(b.received_upto)

    @staticmethod
    def _done(b: ClientBook, seq: int) -> None:
        if seq == b.committed_upto + 1:
            b.committed_upto = seq
            Ledger._advance_committed(b)
        else:
            b.done_above.add(seq)

    @staticmethod
    def _advance_committed(b: ClientBook) -> None:
        while True:
            nxt = b.committed_upto + 1
            if nxt in b.done_above:
                b.committed_upto = nxt
                b.done_above.discard(nxt)
            elif nxt <= b.floor and nxt not in b.remaining:
                # below the floor and not held here: done; jump to the next held message
                held = [s for s in b.remaining if s > nxt]
                b.committed_upto = min(min(held, default=b.floor + 1) - 1, b.floor)
                b.done_above = {s for s in b.done_above if s > b.committed_upto}
            else:
                return
