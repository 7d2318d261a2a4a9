"""Positions: where a change stands in the total order of one stream, and their wire form.

Why one module: the relay keeps a position as one integer (commit LSN in the high 32+ bits,
the change's index within its transaction in the low 32) because integers compare and sort
for free on the hot path; clients see ``"<stream id>/<commit LSN:016X>:<index:08X>"``.  The
bit layout, the text form and the parser used to be rebuilt in the decoder, the replay log, the
server and the service; they are defined here once, and everything else calls these.

The integer stays a plain ``int`` (no wrapper object per change); :class:`Position` is the value
a client's text parses to, with the stream identity it claims (see :mod:`relay.core.stream`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["INDEX_BITS", "INDEX_MASK", "Position", "commit_of", "index_of", "pack", "seq_before"]

INDEX_BITS: Final = 32
INDEX_MASK: Final = (1 << INDEX_BITS) - 1

_TEXT = re.compile(r"(?:([0-9A-Fa-f]{16})/)?([0-9A-Fa-f]{16}):([0-9A-Fa-f]{8})")


def pack(commit_lsn: int, index: int) -> int:
    """The position integer of the ``index``-th change of the transaction committing at ``commit_lsn``."""
    return (commit_lsn << INDEX_BITS) | index


def commit_of(seq: int) -> int:
    """The commit LSN of a position integer."""
    return seq >> INDEX_BITS


def index_of(seq: int) -> int:
    """The index within its transaction of a position integer."""
    return seq & INDEX_MASK


def seq_before(commit_lsn: int) -> int:
    """The largest position before every change of a transaction committing at ``commit_lsn``."""
    return ((commit_lsn - 1) << INDEX_BITS) | INDEX_MASK if commit_lsn > 0 else -1


@dataclass(frozen=True, slots=True)
class Position:
    """A position with the stream it belongs to (``""``: the legacy form without one)."""

    seq: int
    stream: str = ""

    @property
    def commit_lsn(self) -> int:
        return commit_of(self.seq)

    @property
    def index(self) -> int:
        return index_of(self.seq)

    def __str__(self) -> str:
        return Position.format(self.seq, self.stream)

    @staticmethod
    def format(seq: int, stream: str = "") -> str:
        """The wire form of a position integer (see :attr:`relay.core.changes.RowChange.position`).

        Without ``stream`` it is the bare ``<lsn>:<index>`` form (no stream known yet, or a
        position a client sent in the legacy form, echoed back).  A negative position (before
        everything) prints as zero.
        """
        if seq < 0:
            seq = 0
        bare = f"{seq >> INDEX_BITS:016X}:{seq & INDEX_MASK:08X}"
        return f"{stream}/{bare}" if stream else bare

    @classmethod
    def parse(cls, text: object) -> Position:
        """Parse a client-supplied position; ``ValueError`` with a message a client can act on.

        The stream id is upper-cased (positions of one stream compare as strings); it is ``""``
        for the legacy form: the relay cannot tell which database history such a position is of.
        """
        m = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"invalid position {text!r}: expected a stream id (16 hex digits) and a slash, then 16 hex "
                'digits, a colon and 8 hex digits, as in the "position" field of a change '
                '(e.g. "9F0C2A1B3D4E5F60/00000000016B3748:00000000")'
            )
        stream, lsn, index = m.groups()
        return cls(pack(int(lsn, 16), int(index, 16)), (stream or "").upper())
