"""Value types that flow through the relay: LSNs, row changes and transactions.

Why a module of its own: every stage (decode, match, authorize, encode, confirm) speaks these
types, and none of them should need to import another stage to do so.  They are immutable (the
ones built per row or per transaction by convention, not frozen: see :class:`RowChange`) and
carry no I/O, so the pure logic can be tested from fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from relay.core.position import INDEX_BITS, Position, seq_before

__all__ = [
    "Action",
    "Begin",
    "Column",
    "Commit",
    "Lsn",
    "Message",
    "RawSide",
    "RowChange",
    "column_error",
    "commit_epoch",
    "format_position",
    "parse_position",
    "parse_stream_position",
    "seq_before",
]


class Lsn(int):
    """A WAL position.  Postgres prints it as two hex halves, ``16/B374D848``."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Lsn:
        hi, sep, lo = text.partition("/")
        if not sep:
            raise ValueError(f"not an LSN: {text!r}")
        return cls((int(hi, 16) << 32) | int(lo, 16))

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"  # Postgres' two 32-bit halves

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


class Action(StrEnum):
    """The three row events clients subscribe to; the value is the wire spelling."""

    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a changed row.  ``type`` is the Postgres ``typname`` (``int4``, ``_text``)."""

    name: str
    type: str


@dataclass(slots=True)
class Begin:
    """Start of a transaction.  ``commit_lsn`` is known up front in wal2json v2 (``lsn``).

    Treat as immutable; not frozen because a frozen dataclass sets each field through
    ``object.__setattr__`` and one Begin and one Commit are built per transaction (a
    single-row transaction each in a backlog drain).
    """

    xid: int | None
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_timestamp: str


@dataclass(slots=True)
class Commit:
    """End of a transaction; ``end_lsn`` is what we may confirm once it is handed off.

    Treat as immutable (not frozen: see :class:`Begin`).
    """

    commit_lsn: Lsn
    end_lsn: Lsn
    commit_timestamp: str


@dataclass(frozen=True, slots=True)
class Message:
    """A logical message (``pg_logical_emit_message``) with a prefix the relay listens to."""

    prefix: str
    content: str
    transactional: bool
    lsn: Lsn


class RawSide(Protocol):
    """One row of a change as wal2json printed it: its client JSON now, its Python dict on demand.

    Built by the decoder (:class:`relay.core.wal2json.Decoder`); see :class:`RowChange`.
    """

    @property
    def json(self) -> bytes | None:
        """The row's JSON object exactly as clients get it, or None when it must be encoded
        from the dict (a value the encoder has to repair or judge)."""

    def row(self) -> dict[str, Any]:
        """The row as the eager decoder would have built it (same values, same Python types)."""


class RowChange:
    """One decoded row event.

    ``record`` / ``old_record`` hold JSON-ready Python values (int, float, Decimal for exact
    numerics, str, bool, None, list, dict) keyed by column name, in column order.  ``record`` is
    ``None`` for DELETE; ``old_record`` is ``None`` for INSERT.
    ``commit_lsn`` + ``index`` totally order every change the relay ever emits.
    Treat it as immutable: it is not frozen only because frozen objects are several times
    slower to construct, and one is built per decoded row.  ``columns`` and ``column_types`` are
    shared by every change of a table.

    Why ``record`` / ``old_record`` are properties (issue 16, the drain): building a Python dict
    of every row and encoding it back to JSON was a third of the relay's CPU per change, while
    most wal2json values already are the JSON a client gets.  The decoder may give a row as a
    :class:`RawSide` instead of a dict: its client JSON is spliced into frames as it is
    (:meth:`record_json`), and the dict is built the first time anything reads ``record`` (a
    filter, a policy, ``select``, a snapshot, a repair).  One type rather than a lazy subclass:
    every stage (fan-out, cluster log, replay, snapshot) handles the same object whichever way it
    was decoded, and a row given as a dict (tests, the pure decoder) is simply never lazy.
    Assigning ``record`` replaces the row and drops its raw JSON.
    """

    __slots__ = (
        "_new",
        "_old",
        "_old_record",
        "_record",
        "action",
        "column_types",
        "columns",
        "commit_lsn",
        "commit_timestamp",
        "errors",
        "index",
        "pk",
        "raw",
        "schema",
        "stream",
        "table",
        "xid",
    )

    def __init__(
        self,
        schema: str,
        table: str,
        action: Action,
        columns: tuple[Column, ...],
        record: dict[str, Any] | RawSide | None,
        old_record: dict[str, Any] | RawSide | None,
        commit_timestamp: str,
        commit_lsn: Lsn,
        index: int,
        pk: tuple[str, ...] = (),
        column_types: dict[str, str] | None = None,
        raw: bytes = b"",
        errors: list[str] | None = None,
        stream: str = "",
        xid: int = 0,
    ) -> None:
        self.schema = schema
        self.table = table
        self.action = action
        self.columns = columns
        # a RawSide is kept in _new/_old with _record/_old_record = _LAZY until first read
        if record is None or type(record) is dict or not hasattr(record, "row"):
            self._record: Any = record  # a dict, or any Mapping a caller built
            self._new: RawSide | None = None
        else:
            self._record = _LAZY
            self._new = record  # type: ignore[assignment]  # (no cast(): one call per row)
        if old_record is None or type(old_record) is dict or not hasattr(old_record, "row"):
            self._old_record: Any = old_record
            self._old: RawSide | None = None
        else:
            self._old_record = _LAZY
            self._old = old_record  # type: ignore[assignment]
        self.commit_timestamp = commit_timestamp
        self.commit_lsn = commit_lsn
        self.index = index
        self.pk = pk
        self.column_types = column_types if column_types is not None else {}
        self.raw = raw  # the wal2json message it was decoded from (kept by the replay log)
        # Markers (see :func:`column_error`) for values that were replaced by null; sent as ``errors``
        self.errors = errors
        # The identity of the stream it was read from (relay.core.stream): stamped by the server
        # when it fans the change out, since the decoder does not know which database it reads.
        self.stream = stream
        # The 32-bit id of its (top-level) transaction, as wal2json prints it (0: not known).  A
        # snapshot on join decides by it whether the snapshot already holds the change.
        self.xid = xid

    @property
    def record(self) -> dict[str, Any] | None:
        r: dict[str, Any] | None = self._record
        if r is _LAZY:
            assert self._new is not None
            r = self._record = self._new.row()
        return r

    @record.setter
    def record(self, value: dict[str, Any] | None) -> None:
        self._record, self._new = value, None

    @property
    def old_record(self) -> dict[str, Any] | None:
        r: dict[str, Any] | None = self._old_record
        if r is _LAZY:
            assert self._old is not None
            r = self._old_record = self._old.row()
        return r

    @old_record.setter
    def old_record(self, value: dict[str, Any] | None) -> None:
        self._old_record, self._old = value, None

    @property
    def has_record(self) -> bool:
        """``record is not None``, without building the row."""
        return self._record is not None

    @property
    def has_old_record(self) -> bool:
        """``old_record is not None``, without building the row."""
        return self._old_record is not None

    def record_json(self) -> bytes | None:
        """``record`` as the JSON object clients get, when the decoder kept it (else None:
        encode :attr:`record`).  The two are the same JSON, numbers compared exactly."""
        side = self._new
        return side.json if side is not None else None

    def old_record_json(self) -> bytes | None:
        """``old_record`` as :meth:`record_json` gives ``record``."""
        side = self._old
        return side.json if side is not None else None

    def __repr__(self) -> str:
        return (
            f"RowChange({self.schema!r}, {self.table!r}, {self.action!r}, record={self.record!r}, "
            f"old_record={self.old_record!r}, commit_lsn={self.commit_lsn!r}, index={self.index}, "
            f"errors={self.errors!r})"
        )

    @property
    def position(self) -> str:
        """Where this change stands in the total order of all changes: stream, commit LSN, index.

        ``"<stream id>/<commit LSN as 16 hex digits>:<index as 8 hex digits>"``: within one
        stream it compares as a string in the same order as the changes were committed and
        made, so clients can sort, dedupe and resume with it without parsing.  The stream id
        says which database history the LSN belongs to: an LSN alone means nothing once the
        database was restored, failed over or replaced (see :mod:`relay.core.stream`).
        """
        if self.stream:  # inline, not format_position(): one call per change on the hot path
            return f"{self.stream}/{int(self.commit_lsn):016X}:{self.index:08X}"
        return f"{int(self.commit_lsn):016X}:{self.index:08X}"

    @property
    def seq(self) -> int:
        """The position as one integer (commit LSN in the high bits): cheap to compare."""
        return (int(self.commit_lsn) << INDEX_BITS) | self.index  # position.pack, inlined (hot)

    @property
    def filter_row(self) -> dict[str, Any]:
        """The row filters and policies look at: the old row for DELETE, else the new row."""
        if self.action is Action.DELETE:
            return self.old_record or {}
        return self.record or {}


_LAZY: Any = object()  # RowChange: the row is a RawSide not built into a dict yet


_EPOCH: tuple[str, float | None] = ("", None)


def commit_epoch(commit_timestamp: str) -> float | None:
    """A change's ``commit_timestamp`` as seconds since the epoch (None: not a timestamp).

    Why here, memoized: the metrics (commit lag) and the replay window (age) both need it for
    every transaction, and ``datetime.fromisoformat`` per reader per transaction was ~4 % of the
    drain; the last text seen is remembered, so a transaction's timestamp is parsed once.
    """
    global _EPOCH
    last = _EPOCH
    if commit_timestamp == last[0]:
        return last[1]
    try:
        epoch: float | None = datetime.fromisoformat(commit_timestamp).timestamp()
    except ValueError:
        epoch = None
    _EPOCH = (commit_timestamp, epoch)
    return epoch


#: Codes of :func:`column_error`: the value could not be converted from wal2json's text, or
#: could not be encoded as JSON.
DECODE_FAILED = "decode_failed"
ENCODE_FAILED = "encode_failed"


def column_error(code: str, column: str, exc: BaseException) -> str:
    """The ``errors`` entry of a change whose column value was replaced by ``null``.

    ``ColumnError <code>: column "<name>" sent as null (<exception type>)``.  Why not drop the
    change: one value the relay cannot handle must affect only that value, never the stream.  The
    exception's message is left out on purpose: it may quote the value.
    """
    return f'ColumnError {code}: column "{column}" sent as null ({type(exc).__name__})'


def format_position(seq: int, stream: str = "") -> str:
    """The wire form of a position integer: :meth:`relay.core.position.Position.format`."""
    return Position.format(seq, stream)


def parse_stream_position(text: object) -> tuple[str, int]:
    """A client-supplied position as (stream id, position integer): :meth:`Position.parse`."""
    pos = Position.parse(text)
    return pos.stream, pos.seq


def parse_position(text: object) -> int:
    """The position integer of a client-supplied position (its stream id is not checked)."""
    return Position.parse(text).seq
