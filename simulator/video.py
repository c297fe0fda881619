"""The video model: a bitrate ladder, a chunk duration and the size of every chunk at every level."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from abr_common.units import BITS_PER_BYTE, BITS_PER_KBIT, KBIT_PER_MBIT

IntArray = npt.NDArray[np.int64]

#: The ladder of the standard Envivio-Dash3 test video and of the built-in synthetic video.
DEFAULT_LADDER_KBPS: tuple[int, ...] = (300, 750, 1200, 1850, 2850, 4300)
#: Chunk (segment) duration of the built-in video.
DEFAULT_CHUNK_DURATION_S = 4.0
#: Number of chunks of the built-in video (as in the Pensieve evaluation setting).
DEFAULT_N_CHUNKS = 48
#: Seed of the built-in synthetic video: fixed so every machine sees the same "builtin" video.
BUILTIN_VIDEO_SEED = 20170821
#: The description file of a DASH asset folder (`abr_server.lab.asset`), read by `load_video`.
ASSET_META = "asset.json"


class VideoError(ValueError):
    """A video description is malformed; the message names the file or field."""


@dataclass(frozen=True, eq=False)
class Video:
    """A video encoded on a bitrate ladder.

    Attributes:
        bitrates_kbps: nominal bitrate of each level, strictly increasing (level 0 is the lowest).
        chunk_duration_s: playback duration of one chunk.
        chunk_bytes: int64 array ``[n_levels, n_chunks]`` with the size of every chunk in bytes.
        name: a label for tables and metadata.
    """

    bitrates_kbps: tuple[int, ...]
    chunk_duration_s: float
    chunk_bytes: IntArray
    name: str = "video"

    def __post_init__(self) -> None:
        raw = np.asarray(self.chunk_bytes)
        if raw.dtype.kind == "f" and np.any(raw != np.round(raw)):
            raise VideoError(f"{self.name}: chunk_bytes must be whole byte counts")
        if raw.dtype.kind not in "iuf":
            raise VideoError(f"{self.name}: chunk_bytes must be numbers, got dtype {raw.dtype}")
        sizes = np.array(raw, dtype=np.int64, copy=True)
        sizes.setflags(write=False)
        object.__setattr__(self, "chunk_bytes", sizes)
        object.__setattr__(self, "bitrates_kbps", tuple(int(b) for b in self.bitrates_kbps))
        ladder = np.asarray(self.bitrates_kbps)
        if ladder.size < 1:
            raise VideoError(f"{self.name}: the bitrate ladder is empty")
        if np.any(ladder <= 0) or np.any(np.diff(ladder) <= 0):
            raise VideoError(f"{self.name}: bitrates_kbps must be positive and strictly increasing, got {ladder}")
        if not (np.isfinite(self.chunk_duration_s) and self.chunk_duration_s > 0):
            raise VideoError(f"{self.name}: chunk_duration_s must be > 0, got {self.chunk_duration_s}")
        if sizes.ndim != 2 or sizes.shape[0] != ladder.size or sizes.shape[1] < 1:
            raise VideoError(
                f"{self.name}: chunk_bytes must have shape [n_levels={ladder.size}, n_chunks>=1], got {sizes.shape}"
            )
        if np.any(sizes <= 0):
            level, chunk = (int(i) for i in np.argwhere(sizes <= 0)[0])
            raise VideoError(f"{self.name}: chunk {chunk} at level {level} has size {sizes[level, chunk]} <= 0")

    @property
    def n_levels(self) -> int:
        """Number of bitrate levels."""
        return len(self.bitrates_kbps)

    @property
    def n_chunks(self) -> int:
        """Number of chunks in the video."""
        return int(self.chunk_bytes.shape[1])

    @property
    def duration_s(self) -> float:
        """Playback duration of the whole video."""
        return self.n_chunks * self.chunk_duration_s

    @property
    def bitrates_mbps(self) -> npt.NDArray[np.float64]:
        """The ladder in Mbit/s (float64 array)."""
        return np.asarray(self.bitrates_kbps, dtype=np.float64) / KBIT_PER_MBIT

    def to_metadata(self) -> dict[str, object]:
        """A JSON-ready description (used in checkpoints to validate a model against a video)."""
        return {
            "name": self.name,
            "bitrates_kbps": list(self.bitrates_kbps),
            "chunk_duration_s": self.chunk_duration_s,
            "n_chunks": self.n_chunks,
        }

    @classmethod
    def from_size_files(
        cls,
        folder: str | Path,
        bitrates_kbps: Sequence[int] = DEFAULT_LADDER_KBPS,
        *,
        chunk_duration_s: float = DEFAULT_CHUNK_DURATION_S,
        n_chunks: int | None = None,
        name: str | None = None,
    ) -> Video:
        """Read ``video_size_0`` .. ``video_size_{L-1}`` (one integer byte count per line, level 0 lowest).

        Pensieve's size files have 49 lines for a 48-chunk video (the last line only feeds its
        look-ahead); with ``n_chunks=None`` such files are cut to 48 chunks, as the reference does.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise VideoError(f"{folder}: not a folder of video_size_N files")
        rows: list[list[int]] = []
        for level in range(len(bitrates_kbps)):
            path = folder / f"video_size_{level}"
            if not path.is_file():
                raise VideoError(f"{path}: missing (expected one size file per level of {list(bitrates_kbps)})")
            sizes: list[int] = []
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    value = int(text.split()[0])
                except ValueError:
                    raise VideoError(f"{path}:{line_no}: not an integer byte count: {text!r}") from None
                if value <= 0:
                    raise VideoError(f"{path}:{line_no}: chunk size must be > 0, got {value}")
                sizes.append(value)
            if not sizes:
                raise VideoError(f"{path}: empty file")
            rows.append(sizes)
        extra = folder / f"video_size_{len(bitrates_kbps)}"
        if extra.exists():
            raise VideoError(f"{extra}: more size files than ladder levels {list(bitrates_kbps)}")
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise VideoError(f"{folder}: size files have different numbers of chunks: {[len(r) for r in rows]}")
        total = lengths.pop()
        if n_chunks is None:
            n_chunks = total - 1 if total == DEFAULT_N_CHUNKS + 1 else total
        if not 1 <= n_chunks <= total:
            raise VideoError(f"{folder}: n_chunks={n_chunks} but the files have {total} chunks")
        return cls(
            bitrates_kbps=tuple(bitrates_kbps),
            chunk_duration_s=chunk_duration_s,
            chunk_bytes=np.array([r[:n_chunks] for r in rows], dtype=np.int64),
            name=name or folder.name,
        )

    @classmethod
    def synthetic(
        cls,
        bitrates_kbps: Sequence[int] = DEFAULT_LADDER_KBPS,
        *,
        n_chunks: int = DEFAULT_N_CHUNKS,
        chunk_duration_s: float = DEFAULT_CHUNK_DURATION_S,
        complexity_sigma: float = 0.25,
        level_jitter_sigma: float = 0.05,
        seed: int = BUILTIN_VIDEO_SEED,
        name: str = "synthetic",
    ) -> Video:
        """A variable-bitrate video: nominal size times a per-chunk scene complexity shared by all levels.

        Complexity is log-normal with unit mean (``complexity_sigma``) and smoothed over neighbouring
        chunks, as scene content is; each level adds a small independent jitter (``level_jitter_sigma``).
        """
        if n_chunks < 1:
            raise VideoError(f"n_chunks must be >= 1, got {n_chunks}")
        rng = np.random.default_rng(seed)
        raw = rng.normal(0.0, complexity_sigma, size=n_chunks + 2)
        smooth = (raw[:-2] + 2.0 * raw[1:-1] + raw[2:]) / np.sqrt(6.0)  # keeps the variance of raw
        complexity = np.exp(smooth - 0.5 * complexity_sigma**2)
        ladder = np.asarray(bitrates_kbps, dtype=np.float64)
        nominal_bytes = ladder[:, None] * BITS_PER_KBIT / BITS_PER_BYTE * chunk_duration_s
        jitter = np.exp(rng.normal(0.0, level_jitter_sigma, size=(ladder.size, n_chunks)))
        sizes = np.maximum(np.rint(nominal_bytes * complexity[None, :] * jitter), 1).astype(np.int64)
        return cls(tuple(int(b) for b in ladder), chunk_duration_s, sizes, name=name)

    @classmethod
    def builtin(cls) -> Video:
        """The built-in default: a synthetic 48-chunk video on the 300-4300 kbps ladder, 4 s chunks."""
        return cls.synthetic(name="builtin")


def load_video(source: str) -> Video:
    """``builtin`` or a folder of ``video_size_N`` files."""
    if source == "builtin":
        return Video.builtin()
    path = Path(source)
    if not path.exists():
        raise VideoError(f"{source}: no such folder (use 'builtin' or a folder of video_size_N files)")
    meta_path = path / ASSET_META
    if meta_path.is_file():  # a DASH asset made by `abr media make`: its own ladder, segment length and count
        try:
            meta = json.loads(meta_path.read_text())
            ladder = tuple(int(b) for b in meta["bitrates_kbps"])
            seconds, count = float(meta["segment_s"]), int(meta["n_segments"])
            return Video.from_size_files(path, ladder, chunk_duration_s=seconds, n_chunks=count)
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, VideoError):
                raise
            raise VideoError(f"{meta_path}: not a valid asset description ({err!r})") from None
    return Video.from_size_files(path)
