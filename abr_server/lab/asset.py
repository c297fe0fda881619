"""DASH + HLS test assets made with ffmpeg: the simulator's ladder, its chunk duration, H.264 + AAC.

`make_asset` encodes a generated test pattern (or a given file) at every ladder bitrate as constant
bitrate H.264 (x264 with HRD filler, so each segment is as large as its bitrate says), one key frame
per segment, plus one AAC audio track cut to end with the video, into one folder of fMP4 segments
(``init-<rep>.m4s``, ``chunk-<rep>-<n>.m4s``) described twice: ``manifest.mpd`` (DASH: dash.js, Shaka
Player) and ``master.m3u8`` with one ``media_<rep>.m3u8`` per representation (HLS: hls.js), written
by the same ffmpeg run, so every player fetches the same segment files. It then writes what the rest
of the project needs beside them:

- ``video_size_0`` .. ``video_size_{L-1}``: the byte size of every video segment per level (the format
  `simulator.video.Video.from_size_files` reads), so the server, the simulator and the player agree on
  the exact chunk sizes; ``abr serve --video DIR --media DIR`` serves both from one folder.
- ``asset.json``: ladder, resolutions, segment count and duration, and the ffmpeg command used.

The folder is built under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from abr_common.units import BITS_PER_BYTE, BITS_PER_KBIT
from simulator.video import ASSET_META, DEFAULT_CHUNK_DURATION_S, DEFAULT_LADDER_KBPS, Video, load_video

#: Heights of the ladder's levels, lowest bitrate first (the top two share 1080p, as in the Envivio set).
DEFAULT_HEIGHTS = (240, 360, 480, 720, 1080, 1080)
AUDIO_KBPS = 64
AUDIO_SAMPLE_RATE_HZ = 48000
#: Samples per AAC frame; the encoder adds one priming frame ahead of the audio.
AAC_FRAME_SAMPLES = 1024
MANIFEST = "manifest.mpd"
#: The HLS master playlist beside the DASH manifest (its media playlists are ``media_<rep>.m3u8``).
HLS_MASTER = "master.m3u8"
_SEGMENT = re.compile(r"chunk-(\d+)-(\d+)\.m4s")


class AssetError(ValueError):
    """ffmpeg is missing or failed, or the asset it made does not have the expected segments."""


@dataclass(frozen=True)
class AssetSpec:
    """What to encode."""

    duration_s: float = 48 * DEFAULT_CHUNK_DURATION_S
    bitrates_kbps: tuple[int, ...] = DEFAULT_LADDER_KBPS
    heights: tuple[int, ...] = DEFAULT_HEIGHTS
    max_height: int = 1080
    segment_s: float = DEFAULT_CHUNK_DURATION_S
    fps: int = 24
    preset: str = "veryfast"
    source: Path | None = None  # None: a generated test pattern with a tone

    def __post_init__(self) -> None:
        if len(self.heights) != len(self.bitrates_kbps):
            raise AssetError(f"{len(self.heights)} heights for {len(self.bitrates_kbps)} bitrates")
        if self.duration_s < self.segment_s:
            raise AssetError(f"duration_s ({self.duration_s}) is shorter than one segment ({self.segment_s} s)")
        if self.max_height < 72 or self.fps < 1:
            raise AssetError(f"max_height must be >= 72 and fps >= 1, got {self.max_height}, {self.fps}")
        if self.source is not None and not self.source.is_file():
            raise AssetError(f"--input {self.source}: no such file")

    @property
    def n_segments(self) -> int:
        """Segments per representation."""
        return round(self.duration_s / self.segment_s)

    def output_heights(self) -> list[int]:
        """Heights actually encoded (capped, even)."""
        return [min(h, self.max_height) // 2 * 2 for h in self.heights]


def audio_samples(duration_s: float) -> int:
    """Audio samples to encode: whole AAC frames that, with the priming frame, end at or before the video.

    Audio that outlasts the video by a fraction of a frame becomes a last sliver of a segment that
    players waiting for every track's end (hls.js) never count as buffered: playback stalls just short
    of the end instead of ending.
    """
    frames = int(duration_s * AUDIO_SAMPLE_RATE_HZ) // AAC_FRAME_SAMPLES
    return max(frames - 1, 1) * AAC_FRAME_SAMPLES


def ffmpeg_command(spec: AssetSpec, out_dir: Path, ffmpeg: str = "ffmpeg") -> list[str]:
    """The ffmpeg invocation that encodes ``spec`` into ``out_dir``."""
    gop = round(spec.fps * spec.segment_s)
    n = len(spec.bitrates_kbps)
    rate = AUDIO_SAMPLE_RATE_HZ
    if spec.source is None:
        inputs = ["-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={spec.fps}:duration={spec.duration_s}",
                  "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={spec.duration_s}"]  # fmt: skip
        audio = "[1:a:0]"
    else:
        inputs = ["-t", str(spec.duration_s), "-i", str(spec.source)]
        audio = "[0:a:0]"
    split = "".join(f"[s{i}]" for i in range(n))
    scales = ";".join(f"[s{i}]scale=-2:{h},fps={spec.fps}[v{i}]" for i, h in enumerate(spec.output_heights()))
    # The audio starts one AAC frame late, so the encoder's priming frame lands on 0 like the video's first
    # frame and every audio segment ends at or after its video segment (never a few ms short of it).
    trim = (f"{audio}aresample={rate},atrim=end_sample={audio_samples(spec.duration_s)},"
            f"asetpts=PTS+{AAC_FRAME_SAMPLES}/SR/TB[a]")  # fmt: skip
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *inputs,
           "-filter_complex", f"[0:v:0]split={n}{split};{scales};{trim}"]  # fmt: skip
    for i in range(n):
        cmd += ["-map", f"[v{i}]"]
    cmd += ["-map", "[a]"]
    cmd += ["-c:v", "libx264", "-preset", spec.preset, "-profile:v", "main", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-x264-params", "nal-hrd=cbr:force-cfr=1"]  # fmt: skip
    for i, kbps in enumerate(spec.bitrates_kbps):
        cmd += [f"-b:v:{i}", f"{kbps}k", f"-minrate:v:{i}", f"{kbps}k", f"-maxrate:v:{i}", f"{kbps}k",
                f"-bufsize:v:{i}", f"{kbps}k"]  # fmt: skip
    cmd += ["-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2"]
    cmd += ["-f", "dash", "-seg_duration", str(spec.segment_s), "-use_template", "1", "-use_timeline", "0",
            "-adaptation_sets", "id=0,streams=v id=1,streams=a",
            "-init_seg_name", "init-$RepresentationID$.m4s",
            "-media_seg_name", "chunk-$RepresentationID$-$Number%05d$.m4s",
            "-hls_playlist", "1", "-hls_master_name", HLS_MASTER,
            str(out_dir / MANIFEST)]  # fmt: skip
    return cmd


def segment_sizes(folder: Path, n_levels: int) -> list[list[int]]:
    """Byte sizes of the video segments of representations 0..n_levels-1, in segment order."""
    found: dict[int, dict[int, int]] = {}
    for path in folder.iterdir():
        match = _SEGMENT.fullmatch(path.name)
        if match:
            rep, number = int(match.group(1)), int(match.group(2))
            found.setdefault(rep, {})[number] = path.stat().st_size
    sizes = []
    for rep in range(n_levels):
        numbers = found.get(rep, {})
        if not numbers:
            raise AssetError(f"{folder}: no segments for representation {rep}")
        expected = list(range(min(numbers), min(numbers) + len(numbers)))
        if sorted(numbers) != expected:
            raise AssetError(f"{folder}: representation {rep} has gaps in its segment numbers")
        sizes.append([numbers[k] for k in expected])
    if len({len(s) for s in sizes}) != 1:
        raise AssetError(f"{folder}: representations have different segment counts {[len(s) for s in sizes]}")
    return sizes


def make_asset(spec: AssetSpec, out_dir: Path, *, force: bool = False, ffmpeg: str = "ffmpeg") -> Video:
    """Encode ``spec`` into ``out_dir`` (replaced only when complete); the asset's `Video`."""
    binary = shutil.which(ffmpeg)
    if binary is None:
        raise AssetError(f"{ffmpeg} not found: install ffmpeg (Debian: apt-get install ffmpeg)")
    if out_dir.exists() and not force:
        raise AssetError(f"{out_dir} exists: pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        cmd = ffmpeg_command(spec, work, binary)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssetError(f"ffmpeg failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        n_levels = len(spec.bitrates_kbps)
        playlists = [work / HLS_MASTER, *(work / f"media_{rep}.m3u8" for rep in range(n_levels))]
        if not all(p.is_file() for p in playlists):
            raise AssetError(f"ffmpeg wrote no HLS playlists ({HLS_MASTER}, media_N.m3u8): it needs -hls_playlist")
        sizes = segment_sizes(work, n_levels)
        if abs(len(sizes[0]) - spec.n_segments) > 1:
            raise AssetError(f"ffmpeg made {len(sizes[0])} segments, expected {spec.n_segments}")
        for level, row in enumerate(sizes):
            (work / f"video_size_{level}").write_text("".join(f"{b}\n" for b in row))
        meta = {
            "bitrates_kbps": list(spec.bitrates_kbps), "heights": spec.output_heights(), "fps": spec.fps,
            "segment_s": spec.segment_s, "n_segments": len(sizes[0]), "audio_kbps": AUDIO_KBPS,
            "manifest": MANIFEST, "hls_master": HLS_MASTER,
            "source": str(spec.source) if spec.source else "testsrc2+sine",
            "mean_kbps": [round(sum(r) * BITS_PER_BYTE / BITS_PER_KBIT / (len(r) * spec.segment_s)) for r in sizes],
            "ffmpeg": " ".join(cmd[1:]),
        }  # fmt: skip
        (work / ASSET_META).write_text(json.dumps(meta, indent=2) + "\n")
        load_video(str(work))  # the asset must read back as a video before it replaces anything
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
        return load_video(str(out_dir))
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
