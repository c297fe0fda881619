"""Telling apart the players behind one address when they send no session id (the Pensieve client).

The Pensieve client reports ``lastRequest``, the index of the chunk it has just downloaded, and nothing
that names the player. Keying sessions by the client address alone merges two players on one address
and lets a restarted player continue its old history. Instead each report is matched to the history it
continues:

- a report equal to a player's last one is that player's retry;
- index 0 is a player starting: always a new session;
- index k continues a player whose last chunk was k - 1, preferring one that was told to fetch the level
  it now reports and, among those, the one whose last download ended closest before this one began;
- anything else (a player the server has not seen from the start, e.g. after a restart) is a new session.

A match is claimed at once (before the decision is awaited), so two reports that arrive together never
land in one history.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from abr_server.schemas import ChunkReport


@dataclass
class _Player:
    session_id: str
    last_index: int
    last_end_ms: float | None
    last_report: ChunkReport
    told_quality: int | None = None  # the level the server answered for the next chunk


class AnonymousPlayers:
    """Session ids for reports that carry none, by address and by continuity of what they report."""

    def __init__(self, prefix: str, max_addresses: int, max_players_per_address: int = 64) -> None:
        self.prefix = prefix
        self.max_addresses, self.max_players_per_address = max_addresses, max_players_per_address
        self._by_address: OrderedDict[str, list[_Player]] = OrderedDict()
        self._ids = itertools.count(1)

    def session_for(self, address: str, report: ChunkReport, alive: Callable[[str], bool]) -> str:
        """The session ``report`` belongs to (claimed for it now); ``alive`` says which sessions still exist."""
        players = [p for p in self._by_address.pop(address, []) if alive(p.session_id)]
        self._by_address[address] = players  # most recently used last
        while len(self._by_address) > self.max_addresses:
            self._by_address.popitem(last=False)
        for player in players:
            if player.last_report == report:
                return player.session_id
        continued = self._continued(players, report) if report.index > 0 else None
        if continued is not None:
            player = continued
        else:
            player = _Player(f"{self.prefix}:{address}:{next(self._ids)}", report.index, None, report)
            players.append(player)
            del players[: max(len(players) - self.max_players_per_address, 0)]
        player.last_index, player.last_report, player.told_quality = report.index, report, None
        player.last_end_ms = report.end_ms
        return player.session_id

    def told(self, address: str, session_id: str, quality: int) -> None:
        """Record the level the player of ``session_id`` was told to fetch next."""
        for player in self._by_address.get(address, []):
            if player.session_id == session_id:
                player.told_quality = quality

    def forget(self, address: str, session_id: str) -> None:
        """Drop a finished player."""
        players = self._by_address.get(address)
        if players is not None:
            players[:] = [p for p in players if p.session_id != session_id]

    @staticmethod
    def _continued(players: list[_Player], report: ChunkReport) -> _Player | None:
        candidates = [p for p in players if p.last_index == report.index - 1]
        if not candidates:
            return None

        def rank(player: _Player) -> tuple[bool, bool, float]:
            followed = player.told_quality is None or player.told_quality == report.quality
            gap_ms = _gap_ms(player, report)
            return followed, gap_ms is not None and gap_ms >= 0, -abs(gap_ms) if gap_ms is not None else 0.0

        return max(candidates, key=rank)


def _gap_ms(player: _Player, report: ChunkReport) -> float | None:
    """How long after the player's last download ended this one began (None if a time is unknown)."""
    if player.last_end_ms is None or report.request_start_ms is None:
        return None
    return report.request_start_ms - player.last_end_ms
