"""Common Media Client Data (CTA-5004) as a report: what players send natively with each segment request.

A player with CMCD on (dash.js ``cmcd.enabled``, hls.js ``cmcd``, Shaka ``cmcd.enabled``) sends, with
every request, its buffer length ``bl`` (ms), measured throughput ``mtp`` (kbit/s), the requested
object's encoded bitrate ``br`` (kbit/s), type ``ot`` and duration ``d``, its session ``sid``, content
``cid`` and ``su`` while starting up, as a ``CMCD`` query argument or in the ``CMCD-Object``,
``CMCD-Request``, ``CMCD-Session`` and ``CMCD-Status`` headers. That is a report once the server
supplies what CMCD lacks: the chunk index (counted per session; ``su`` restarts it), the level (the
ladder rung nearest ``br``), its size (the video's) and the download time (size / ``mtp``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from abr_server.schemas import ChunkReport
from simulator.video import Video

#: The header names CMCD may travel in (lower case, as ASGI gives them).
HEADERS = ("cmcd-object", "cmcd-request", "cmcd-session", "cmcd-status")
#: The query argument it may travel in.
QUERY_KEY = "CMCD"
#: Object types that are video segments (``v`` video, ``av`` muxed); others have nothing to decide.
VIDEO_OBJECTS = frozenset({"v", "av"})
#: A CMCD payload is short (a few dozen bytes); a longer one is refused.
MAX_CMCD_CHARS = 4096

_KEY = re.compile(r"[a-z0-9-]{1,64}")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")

CmcdValue = str | int | float | bool


class CmcdError(ValueError):
    """A CMCD payload that cannot be read, or lacks what a report needs (answered with 422)."""


def parse(texts: Iterable[str]) -> dict[str, CmcdValue]:
    """The keys of one or more CMCD payloads (``br=3200,bl=21300,ot=v,sid="6e2f..."``); later ones win."""
    data: dict[str, CmcdValue] = {}
    for text in texts:
        if len(text) > MAX_CMCD_CHARS:
            raise CmcdError(f"CMCD: {len(text)} characters, at most {MAX_CMCD_CHARS}")
        for item in _split(text):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not _KEY.fullmatch(key):
                raise CmcdError(f"CMCD: {key!r} is not a key")
            data[key] = _value(key, raw.strip()) if sep else True
    return data


def _split(text: str) -> list[str]:
    """Split on commas outside double-quoted strings."""
    items, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise CmcdError("CMCD: a string is not closed")
    items.append("".join(current))
    return [item for item in (i.strip() for i in items) if item]


def _value(key: str, raw: str) -> CmcdValue:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if _NUMBER.fullmatch(raw):
        return float(raw) if "." in raw else int(raw)
    if raw in ("true", "false"):  # not in the spec (a true boolean is the bare key), but sent by some clients
        return raw == "true"
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", raw):  # a token: ot=v, sf=d, st=v
        return raw
    raise CmcdError(f"CMCD: {key}={raw!r} is not a number, string or token")


def collect(query: Mapping[str, str], headers: Mapping[str, str]) -> dict[str, CmcdValue]:
    """CMCD from the query argument and the four headers of one request."""
    texts = [headers[name] for name in HEADERS if name in headers]
    if QUERY_KEY in query:
        texts.append(query[QUERY_KEY])
    if not texts:
        raise CmcdError("no CMCD: send the CMCD query argument or CMCD-* headers")
    return parse(texts)


def is_video(data: Mapping[str, CmcdValue]) -> bool:
    """The request is for a video segment (or says nothing of its type)."""
    return str(data.get("ot", "v")) in VIDEO_OBJECTS


def level_for(bitrate_kbps: float, video: Video) -> int:
    """The ladder level whose bitrate is nearest ``bitrate_kbps``."""
    return min(range(video.n_levels), key=lambda level: abs(float(video.bitrates_kbps[level]) - bitrate_kbps))


def to_report(data: Mapping[str, CmcdValue], index: int, video: Video, video_name: str | None) -> ChunkReport:
    """The report of chunk ``index`` of ``video`` that CMCD ``data`` describes.

    A session's first request carries the throughput the player measured before the session (``mtp``
    before any of its segments arrived): it is also the session's throughput prior.
    """
    missing = [key for key in ("br", "bl", "mtp") if not isinstance(data.get(key), int | float)]
    if missing or isinstance(data.get("br"), bool):
        raise CmcdError(f"CMCD: needs numbers br, bl and mtp (missing or not numbers: {', '.join(missing)})")
    quality = level_for(float(data["br"]), video)
    size = int(video.chunk_bytes[quality, min(index, video.n_chunks - 1)])
    fields = {"index": index, "quality": quality, "bytes": size, "bl": float(data["bl"]), "mtp": float(data["mtp"]),
              "video": video_name}  # fmt: skip
    if index == 0:
        fields["prior_throughput_kbps"] = float(data["mtp"])
    return ChunkReport.model_validate(fields)
