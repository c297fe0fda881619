"""Evaluation reports: per-policy results, the markdown report, and the plots behind `abr eval`.

Everything here is pure: functions turn `SessionLogs` into result records, records into a JSON document
and markdown tables, and logs into PNG bytes. Only `write_report_files` touches the disk, and it writes
every file atomically. matplotlib is imported inside the plotting functions, so importing this module
(and the `abr` command) stays light.

Conventions: a *score* is the standard session score (mean per-chunk QoE over chunks 2..N); a result's
QoE is the mean score over the traces of a set, with a normal 95% interval of that mean. The *gap to
optimal* of a policy is ``(optimal - x) / |optimal| * 100`` percent: how far it falls below the offline
optimum on the same traces (0% = as good as the upper bound).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from abr_common.files import figure_png, write_atomic
from abr_common.units import BITS_PER_BYTE, KBIT_PER_MBIT, MS_PER_S
from policy.evaluation.loop import SessionLogs, Summary, summarize
from simulator.qoe import HD_UTILITIES, REBUFFER_PENALTY, QoEConfig, QoEKind, session_score_terms
from traces.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FloatArray = npt.NDArray[np.float64]

#: The QoE variants every result reports.
QOE_KINDS: tuple[QoEKind, ...] = ("lin", "log", "hd")
#: Registry name of the offline upper bound.
OPTIMAL_NAME = "optimal"
#: Colour of the upper bound in every plot (the online policies take the tab10 cycle).
OPTIMAL_COLOR = "black"
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PolicyResult:
    """Aggregate figures of one policy on one trace set (one row of ``results.json``).

    QoE fields are mean session scores with their 95% half-intervals; ``qoe_hd*`` is None when the
    ladder does not have the six levels the HD utilities are defined for, and a ``*_ci95`` is None
    with a single trace.
    """

    policy: str
    traces: str
    n_traces: int
    qoe_lin: float
    qoe_lin_ci95: float | None
    qoe_log: float
    qoe_log_ci95: float | None
    qoe_hd: float | None
    qoe_hd_ci95: float | None
    bitrate_kbps: float
    rebuf_s: float
    switches: float
    wall_s: float
    #: QoE_lin's terms (means over sessions of `simulator.qoe.session_score_terms`): qoe_lin is
    #: utility - rebuffer - smoothness.
    qoe_lin_utility: float = math.nan
    qoe_lin_rebuffer: float = math.nan
    qoe_lin_smoothness: float = math.nan

    def qoe(self, kind: QoEKind) -> float | None:
        """Mean score under QoE variant ``kind`` (None where it was not computed)."""
        value: float | None = getattr(self, f"qoe_{kind}")
        return value

    def qoe_ci95(self, kind: QoEKind) -> float | None:
        """95% half-interval of `qoe` (None where unknown)."""
        value: float | None = getattr(self, f"qoe_{kind}_ci95")
        return value

    def to_summary(self, kind: QoEKind) -> Summary:
        """The `Summary` for ``kind``, as `abr simulate` prints it (NaN where a figure is unknown)."""
        qoe, ci = self.qoe(kind), self.qoe_ci95(kind)
        return Summary(
            policy=self.policy,
            traces=self.traces,
            n_traces=self.n_traces,
            qoe=math.nan if qoe is None else qoe,
            qoe_ci95=math.nan if ci is None else ci,
            bitrate_kbps=self.bitrate_kbps,
            rebuf_s=self.rebuf_s,
            switches=self.switches,
            wall_s=self.wall_s,
        )


def hd_applies(n_levels: int) -> bool:
    """Whether the HD QoE variant is defined for a ladder of ``n_levels`` levels."""
    return n_levels == len(HD_UTILITIES)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def result_from_logs(logs: SessionLogs, policy: str, traces: str, wall_s: float) -> PolicyResult:
    """Summarise one policy's sessions on one trace set under every applicable QoE variant."""
    lin = summarize(logs, policy, traces, wall_s, QoEConfig(kind="lin"))
    log = summarize(logs, policy, traces, wall_s, QoEConfig(kind="log"))
    hd = summarize(logs, policy, traces, wall_s, QoEConfig(kind="hd")) if hd_applies(logs.video.n_levels) else None
    utility, rebuffer, smoothness = session_score_terms(QoEConfig(kind="lin"), logs.video, logs.quality, logs.rebuf_s,
                                                        logs.initial_quality)  # fmt: skip
    return PolicyResult(
        policy=policy,
        traces=traces,
        n_traces=lin.n_traces,
        qoe_lin=lin.qoe,
        qoe_lin_ci95=_finite(lin.qoe_ci95),
        qoe_log=log.qoe,
        qoe_log_ci95=_finite(log.qoe_ci95),
        qoe_hd=None if hd is None else hd.qoe,
        qoe_hd_ci95=None if hd is None else _finite(hd.qoe_ci95),
        bitrate_kbps=lin.bitrate_kbps,
        rebuf_s=lin.rebuf_s,
        switches=lin.switches,
        wall_s=wall_s,
        qoe_lin_utility=float(utility.mean()),
        qoe_lin_rebuffer=float(rebuffer.mean()),
        qoe_lin_smoothness=float(smoothness.mean()),
    )


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made distinct (``a``, ``a#2``, ...), so they can key a mapping."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def per_trace_scores(logs: SessionLogs, kind: QoEKind = "lin") -> dict[str, float]:
    """Session score of every trace under ``kind``, keyed by trace name (repeats made distinct)."""
    scores = logs.scores(QoEConfig(kind=kind))
    return dict(zip(unique_names(logs.trace_names), (float(s) for s in scores), strict=True))


@dataclass(frozen=True)
class SessionTimeline:
    """One session chunk by chunk, for the timeline plot (1-D arrays of length n_chunks)."""

    policy: str
    bitrate_kbps: npt.NDArray[np.int64]
    chunk_bytes: npt.NDArray[np.int64]
    delay_ms: FloatArray
    sleep_ms: FloatArray
    buffer_s: FloatArray
    rebuf_s: FloatArray
    chunk_duration_s: float
    score_lin: float
    switches: int

    @classmethod
    def from_logs(cls, logs: SessionLogs, index: int, policy: str) -> SessionTimeline:
        """Session ``index`` of ``logs``."""
        return cls(
            policy=policy,
            bitrate_kbps=logs.bitrate_kbps()[index].copy(),
            chunk_bytes=logs.chunk_bytes[index].copy(),
            delay_ms=logs.delay_ms[index].copy(),
            sleep_ms=logs.sleep_ms[index].copy(),
            buffer_s=logs.buffer_s[index].copy(),
            rebuf_s=logs.rebuf_s[index].copy(),
            chunk_duration_s=logs.video.chunk_duration_s,
            score_lin=float(logs.scores(QoEConfig(kind="lin"))[index]),
            switches=int(logs.switches()[index]),
        )

    @property
    def start_s(self) -> FloatArray:
        """When each chunk's download starts: the sum of (delay + sleep) of the chunks before it."""
        spent_s = (self.delay_ms + self.sleep_ms) / MS_PER_S
        return np.concatenate([[0.0], np.cumsum(spent_s)[:-1]])

    @property
    def end_s(self) -> float:
        """When the last download (and its sleep) ends."""
        return float(np.sum(self.delay_ms + self.sleep_ms) / MS_PER_S)

    @property
    def measured_mbps(self) -> FloatArray:
        """Throughput each download measured, as a player sees it (bytes over the whole delay, RTT included)."""
        # bits per millisecond are kbit/s
        return np.asarray(self.chunk_bytes * BITS_PER_BYTE / self.delay_ms / KBIT_PER_MBIT, dtype=np.float64)

    def buffer_curve(self) -> tuple[FloatArray, FloatArray]:
        """The buffer level over time ``(t_s, buffer_s)``, exact between chunk events.

        During download k the buffer drains at one second per second (stalling at 0), jumps by one chunk
        when the chunk arrives, then drains through the sleep to the logged ``buffer_s[k]``.
        """
        t: list[float] = [0.0]
        b: list[float] = [0.0]
        before = 0.0
        for k, start in enumerate(self.start_s.tolist()):
            delay_s = float(self.delay_ms[k]) / MS_PER_S
            sleep_s = float(self.sleep_ms[k]) / MS_PER_S
            arrive = start + delay_s
            if before < delay_s:
                t += [start + before, arrive]
                b += [0.0, 0.0]
            else:
                t.append(arrive)
                b.append(before - delay_s)
            t.append(arrive)
            b.append(max(before - delay_s, 0.0) + self.chunk_duration_s)
            if sleep_s > 0:
                t.append(arrive + sleep_s)
                b.append(float(self.buffer_s[k]))
            before = float(self.buffer_s[k])
        return np.asarray(t), np.asarray(b)

    def stalls_s(self) -> list[tuple[float, float]]:
        """``(from_s, to_s)`` of every stall: the part of a download after the buffer ran dry."""
        out: list[tuple[float, float]] = []
        for k in np.flatnonzero(self.rebuf_s > 0):
            end = float(self.start_s[k] + self.delay_ms[k] / MS_PER_S)
            out.append((end - float(self.rebuf_s[k]), end))
        return out


@dataclass
class Evaluation:
    """Everything one `abr eval` run produced, in memory, before anything is written.

    Attributes:
        video: the video's name.
        ladder_kbps: its bitrate ladder (six levels: QoE_hd applies).
        results: one `PolicyResult` per (trace set, policy), in run order.
        per_trace: ``kind -> policy -> trace set -> trace -> score`` for the computed QoE variants.
        optimal: label of the upper-bound policy among the results, or None.
        optimal_note: why there is no upper bound, when there is none (a sentence for the report).
        timeline_trace: the trace shown in the timeline plot, its set, and each policy's session on it.
    """

    video: str
    ladder_kbps: tuple[int, ...]
    results: list[PolicyResult] = field(default_factory=list)
    per_trace: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    optimal: str | None = None
    optimal_note: str | None = None
    timeline_trace: Trace | None = None
    timeline_traces: str | None = None
    timeline: list[SessionTimeline] = field(default_factory=list)

    @property
    def n_levels(self) -> int:
        """Levels of the video's ladder."""
        return len(self.ladder_kbps)

    @property
    def policies(self) -> list[str]:
        """Policy labels in run order."""
        return list(dict.fromkeys(r.policy for r in self.results))

    @property
    def trace_sets(self) -> list[str]:
        """Trace-set labels in run order."""
        return list(dict.fromkeys(r.traces for r in self.results))

    def add(self, logs: SessionLogs, policy: str, traces: str, wall_s: float, kinds: Sequence[QoEKind]) -> None:
        """Record one policy's sessions on one trace set."""
        self.results.append(result_from_logs(logs, policy, traces, wall_s))
        for kind in kinds:
            by_policy = self.per_trace.setdefault(kind, {}).setdefault(policy, {})
            by_policy[traces] = per_trace_scores(logs, kind)


@dataclass(frozen=True)
class RunInfo:
    """Where and how a report was made (written into ``results.json`` and the report's header)."""

    date: str
    command: str
    arguments: dict[str, Any]
    machine: str


def results_document(evaluation: Evaluation, info: RunInfo, *, qoe_table: QoEKind = "lin") -> dict[str, Any]:
    """The ``results.json`` document: results rows, per-trace QoE_lin, and how the run was made."""
    return {
        "video": evaluation.video,
        "results": [asdict(r) for r in evaluation.results],
        "per_trace": evaluation.per_trace.get("lin", {}),
        "qoe_table": qoe_table,
        "optimal": evaluation.optimal,
        "optimal_note": evaluation.optimal_note,
        "timeline": None
        if evaluation.timeline_trace is None
        else {"trace": evaluation.timeline_trace.name, "traces": evaluation.timeline_traces},
        "date": info.date,
        "command": info.command,
        "arguments": info.arguments,
        "machine": info.machine,
    }


# --------------------------------------------------------------------------------------------------
# Markdown


def _md(text: str) -> str:
    """Escape the characters that would break a markdown table cell or add emphasis.

    Underscores are left alone: inside a word (``QoE_lin``, ``markov_0000``) they never emphasise.
    """
    return re.sub(r"([|*`\\])", r"\\\1", text)


def _alt(text: str) -> str:
    """Image alt text: only brackets would end it early."""
    return text.replace("[", "(").replace("]", ")")


def gap_percent(value: float, optimal: float) -> float | None:
    """``(optimal - value) / |optimal| * 100``; None when the optimum is 0 (no scale to compare on)."""
    if optimal == 0 or not (math.isfinite(value) and math.isfinite(optimal)):
        return None
    return (optimal - value) / abs(optimal) * 100.0


def _lookup(results: Sequence[PolicyResult]) -> dict[tuple[str, str], PolicyResult]:
    return {(r.policy, r.traces): r for r in results}


def qoe_table_markdown(
    results: Sequence[PolicyResult], *, kind: QoEKind = "lin", optimal: str | None = OPTIMAL_NAME
) -> str:
    """Policies (rows) x trace sets (columns) of mean QoE ± 95%, best per set in bold, gap to optimal.

    The best online policy of each trace set is bold (ties all bold); the ``optimal`` row, when present,
    is the upper bound: it is not ranked, is shown last, and every other row gets a gap column per set.
    """
    table = _lookup(results)
    policies = list(dict.fromkeys(r.policy for r in results))
    sets = list(dict.fromkeys(r.traces for r in results))
    has_optimal = optimal is not None and optimal in policies
    if has_optimal:
        policies = [p for p in policies if p != optimal] + [optimal]  # type: ignore[list-item]

    best: dict[str, float] = {}
    for s in sets:
        values = [v for p in policies if p != optimal and (r := table.get((p, s))) and (v := r.qoe(kind)) is not None]
        if values:
            best[s] = max(values)

    header = ["policy"]
    for s in sets:
        n = next((r.n_traces for r in results if r.traces == s), 0)
        header.append(f"{_md(s)} (n={n}): QoE_{kind} ± 95%")
        if has_optimal:
            header.append(f"{_md(s)}: gap to optimal")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]

    for p in policies:
        is_bound = has_optimal and p == optimal
        cells = [f"{_md(p)} *(offline upper bound)*" if is_bound else _md(p)]
        for s in sets:
            r = table.get((p, s))
            value = None if r is None else r.qoe(kind)
            if r is None or value is None:
                cells.append("n/a")
            else:
                ci = r.qoe_ci95(kind)
                text = f"{value:.3f}" + ("" if ci is None else f" ± {ci:.3f}")
                if not is_bound and s in best and value == best[s]:
                    text = f"**{text}**"
                cells.append(text)
            if has_optimal:
                bound = table.get((optimal, s))  # type: ignore[arg-type]
                bound_value = None if bound is None else bound.qoe(kind)
                if is_bound or value is None or bound_value is None:
                    cells.append("–")
                else:
                    gap = gap_percent(value, bound_value)
                    cells.append("n/a" if gap is None else f"{gap:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def terms_table_markdown(results: Sequence[PolicyResult], *, reference: str = "robustmpc") -> str:
    """Where QoE_lin is won or lost: its three terms per (trace set, policy), and each term's difference to
    ``reference`` on the same set (positive: better than it) where that policy was run."""
    lines = [
        "| trace set | policy | QoE_lin | utility (Mbit/s) | − rebuffering | − smoothness "
        f"| vs {_md(reference)}: utility | rebuffering | smoothness |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = _lookup(results)
    for s in dict.fromkeys(r.traces for r in results):
        ref = by_key.get((reference, s))
        for r in (r for r in results if r.traces == s):
            if ref is None or r is ref:
                diffs = ["", "", ""]
            else:
                diffs = [f"{r.qoe_lin_utility - ref.qoe_lin_utility:+.3f}",
                         f"{ref.qoe_lin_rebuffer - r.qoe_lin_rebuffer:+.3f}",
                         f"{ref.qoe_lin_smoothness - r.qoe_lin_smoothness:+.3f}"]  # fmt: skip
            lines.append(
                f"| {_md(r.traces)} | {_md(r.policy)} | {r.qoe_lin:.3f} | {r.qoe_lin_utility:.3f} "
                f"| {r.qoe_lin_rebuffer:.3f} | {r.qoe_lin_smoothness:.3f} | " + " | ".join(diffs) + " |"
            )
    return "\n".join(lines) + "\n"


def details_table_markdown(results: Sequence[PolicyResult]) -> str:
    """One row per (trace set, policy): traces, mean bitrate, rebuffering and switches per session, wall time."""
    lines = [
        "| trace set | policy | n | bitrate (kbps) | rebuffering (s/session) | switches/session | wall (s) |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for s in dict.fromkeys(r.traces for r in results):
        for r in (r for r in results if r.traces == s):
            lines.append(
                f"| {_md(r.traces)} | {_md(r.policy)} | {r.n_traces} | {r.bitrate_kbps:.0f} | {r.rebuf_s:.2f} "
                f"| {r.switches:.1f} | {r.wall_s:.2f} |"
            )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PlotFile:
    """A plot of the report: its file name (relative to the report), caption and PNG bytes."""

    name: str
    caption: str
    png: bytes


def render_markdown(
    evaluation: Evaluation,
    info: RunInfo,
    *,
    qoe_table: QoEKind = "lin",
    cdf_plots: Sequence[PlotFile] = (),
    timeline_plot: PlotFile | None = None,
) -> str:
    """The whole ``report.md``: header, QoE table, details table, and the plots (relative links)."""
    kind_text = {"lin": "QoE_lin (bitrate in Mbit/s)", "log": "QoE_log (ln R/R_min)", "hd": "QoE_hd (HD utilities)"}
    parts = [
        f"# ABR evaluation: video {_md(evaluation.video)}\n",
        f"{info.date} on {_md(info.machine)}.\n",
        f"Score: {kind_text[qoe_table]}, the mean per-chunk QoE over chunks 2..N of a session (the first chunk"
        " is fetched at a fixed level), averaged over the traces of a set; ± is the 95% interval of that mean.\n",
        f"## {kind_text[qoe_table].split(' ')[0]} by policy and trace set\n",
        qoe_table_markdown(evaluation.results, kind=qoe_table, optimal=evaluation.optimal),
    ]
    notes = []
    if evaluation.optimal is not None:
        notes.append(
            f"Bold: the best policy of each trace set, not counting `{evaluation.optimal}`, the offline optimum"
            " (it knows the whole trace in advance, so it bounds what any player could reach)."
            " Gap to optimal: (optimal − x) / |optimal| × 100%; lower is better."
        )
    else:
        notes.append("Bold: the best policy of each trace set.")
        if evaluation.optimal_note:
            notes.append(evaluation.optimal_note)
    parts.append(" ".join(notes) + "\n")
    if not hd_applies(evaluation.n_levels):
        parts.append(
            f"QoE_hd is not reported: its utilities are defined for a 6-level ladder and this video has"
            f" {evaluation.n_levels} levels.\n"
        )
    parts += ["## Bitrate, rebuffering and switches\n", details_table_markdown(evaluation.results)]
    parts += [
        "## Where QoE_lin is won or lost\n",
        "QoE_lin per chunk is the bitrate's utility (Mbit/s) minus the rebuffering penalty"
        f" ({REBUFFER_PENALTY['lin']:g} per second of"
        " stall) minus the smoothness penalty (|change of utility|), each averaged over chunks 2..N and the"
        " traces of a set; the differences to robustMPC are signed so that positive is better.\n",
        terms_table_markdown(evaluation.results),
    ]
    if cdf_plots:
        parts.append("## Per-trace scores\n")
        parts.append(
            "Each curve is the distribution of per-trace scores of one policy: further right is better;"
            " a long left tail means some traces went badly (usually stalls).\n"
        )
        parts += [f"![{_alt(p.caption)}]({p.name})\n" for p in cdf_plots]
    if timeline_plot is not None:
        parts.append("## One session up close\n")
        parts.append(
            "The chosen bitrate, the buffer (flat at 0 while the video stalls) and the throughput: the trace's"
            " own and what each download measured.\n"
        )
        parts.append(f"![{_alt(timeline_plot.caption)}]({timeline_plot.name})\n")
    parts += ["## Reproduce\n", f"```\n{info.command}\n```\n"]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Plots


def file_stem(name: str) -> str:
    """``name`` made safe as part of a file name (``markov:n=6,seed=1`` -> ``markov_n_6_seed_1``)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("._") or "unnamed"


def policy_styles(policies: Sequence[str], optimal: str | None = None) -> dict[str, tuple[str, str]]:
    """A fixed ``(colour, marker)`` per policy, the same in every plot; the upper bound is black."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    for p in policies:
        if p == optimal:
            out[p] = (OPTIMAL_COLOR, "x")
        else:
            out[p] = (_PALETTE[i % len(_PALETTE)], _MARKERS[i % len(_MARKERS)])
            i += 1
    return out


def plot_cdf(
    scores: Mapping[str, Sequence[float]],
    *,
    traces: str,
    kind: QoEKind = "lin",
    optimal: str | None = None,
) -> bytes:
    """PNG of the CDF of per-trace scores, one curve per policy (legend ordered best mean first)."""
    from matplotlib.figure import Figure

    styles = policy_styles(list(scores), optimal)
    figure = Figure(figsize=(8.0, 5.0), layout="constrained")
    axes = figure.subplots()
    order = sorted(scores, key=lambda p: -float(np.mean(scores[p])) if len(scores[p]) else math.inf)
    n = max((len(v) for v in scores.values()), default=0)
    for p in order:
        values = np.sort(np.asarray(scores[p], dtype=np.float64))
        if values.size == 0:
            continue
        color, _ = styles[p]
        share = np.arange(1, values.size + 1) / values.size
        axes.step(
            np.concatenate([[values[0]], values]),
            np.concatenate([[0.0], share]),
            where="post",
            color=color,
            linewidth=2.2 if p != optimal else 1.8,
            linestyle="--" if p == optimal else "-",
            label=f"{p} (mean {values.mean():.3f})" + (", upper bound" if p == optimal else ""),
        )
        axes.axvline(float(values.mean()), color=color, linewidth=0.8, linestyle=":", alpha=0.8)
    axes.set_title(f"Per-trace QoE_{kind} on {traces} ({n} traces): further right is better")
    axes.set_xlabel(f"QoE_{kind} per chunk of a session (mean over chunks 2..N)")
    axes.set_ylabel("share of traces with a lower or equal score")
    axes.set_ylim(0.0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", title="policy (dotted: mean)", fontsize=9)
    return figure_png(figure)


def trace_steps(trace: Trace, until_s: float) -> tuple[FloatArray, FloatArray, list[float]]:
    """The throughput a session starting at the trace's first sample sees, up to ``until_s`` seconds in.

    Returns ``(edges_s, throughput_mbps, wraps_s)``: sample i holds from ``times_s[i-1]`` to
    ``times_s[i]``; past the last sample the trace wraps to its second sample with clock 0 (so the first
    interval of every later pass runs from clock 0 to ``times_s[1]``), and ``wraps_s`` are the wrap times.
    """
    t = trace.times_s
    values = trace.throughput_mbps[1:]
    edges = [t - t[0]]
    parts = [values]
    wraps: list[float] = []
    end = float(t[-1] - t[0])
    period = float(t[-1])
    while end < until_s and len(wraps) < 1000:
        wraps.append(end)
        edges.append(end + t[1:])
        parts.append(values)
        end += period
    return np.concatenate(edges), np.concatenate(parts), wraps


def plot_timeline(
    trace: Trace,
    sessions: Sequence[SessionTimeline],
    *,
    traces: str,
    ladder_kbps: Sequence[int],
    optimal: str | None = None,
) -> bytes:
    """PNG of one trace's sessions: bitrate, buffer and throughput panels over a shared time axis."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    styles = policy_styles([s.policy for s in sessions], optimal)
    figure = Figure(figsize=(11.0, 9.5), layout="constrained")
    rate_ax, buffer_ax, tput_ax = figure.subplots(3, 1, sharex=True, height_ratios=(1.0, 1.0, 1.1))
    figure.suptitle(f"Trace {trace.name} ({traces})\nwhat each policy chose, and what happened", fontsize=13)
    until = max((s.end_s for s in sessions), default=float(trace.duration_s))

    # Policies often sit on the same level; nudging each line by a sliver of the ladder keeps all visible.
    spread_kbps = float(max(ladder_kbps) - min(ladder_kbps)) if len(ladder_kbps) > 1 else float(ladder_kbps[0])
    handles: list[Line2D] = []
    for i, s in enumerate(sessions):
        color, marker = styles[s.policy]
        dashed = "--" if s.policy == optimal else "-"
        starts = s.start_s
        nudge_kbps = (i - (len(sessions) - 1) / 2) * 0.012 * spread_kbps
        rate_ax.step(
            np.concatenate([starts, [s.end_s]]),
            np.concatenate([s.bitrate_kbps, s.bitrate_kbps[-1:]]) + nudge_kbps,
            where="post",
            color=color,
            linestyle=dashed,
            linewidth=1.8,
            alpha=0.9,
        )
        t_s, b_s = s.buffer_curve()
        buffer_ax.plot(t_s, b_s, color=color, linestyle=dashed, linewidth=1.5, alpha=0.9)
        for lo, hi in s.stalls_s():
            buffer_ax.hlines(0.0, lo, hi, colors=color, linewidth=6, alpha=0.6)
        tput_ax.plot(
            starts + s.delay_ms / 2000.0,
            s.measured_mbps,
            linestyle="none",
            marker=marker,
            markersize=5,
            color=color,
            alpha=0.85,
        )
        switches = f"{s.switches} switch" + ("" if s.switches == 1 else "es")
        handles.append(
            Line2D(
                [],
                [],
                color=color,
                linestyle="--" if s.policy == optimal else "-",
                marker=marker,
                linewidth=1.8,
                label=f"{s.policy}: QoE_lin {s.score_lin:.2f}, stalls {float(s.rebuf_s.sum()):.1f} s, {switches}",
            )
        )
    # One legend for all panels, below them, so it never hides a curve.
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(3, max(1, len(handles))),
        fontsize=9,
        title="policy: session score (QoE_lin per chunk), total stall time, switches; markers: measured throughput",
        title_fontsize=9,
    )

    edges, values, wraps = trace_steps(trace, until)
    tput_ax.stairs(values, edges, color="0.45", linewidth=1.4, label="trace throughput", zorder=0)
    for i, w in enumerate(wraps):
        label = "trace ends and wraps to its start" if i == 0 else None
        tput_ax.axvline(w, color="0.3", linestyle=":", linewidth=1.2, label=label)

    _style_axes(rate_ax, "Chosen bitrate (overlapping lines nudged apart)", "bitrate (kbps)")
    rate_ax.set_yticks(list(ladder_kbps))
    _style_axes(buffer_ax, "Playback buffer (thick bars at 0: stalls)", "buffer (s)")
    buffer_ax.set_ylim(bottom=-1.0)
    _style_axes(
        tput_ax, "Throughput: the trace (line) and what each download measured (markers)", "throughput (Mbit/s)"
    )
    tput_ax.set_ylim(bottom=0.0)
    tput_ax.legend(loc="upper right", fontsize=9)
    tput_ax.set_xlabel("time since the session started (s)")
    tput_ax.set_xlim(0.0, until * 1.01)
    return figure_png(figure)


def _style_axes(axes: Axes, title: str, ylabel: str) -> None:
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


# --------------------------------------------------------------------------------------------------
# The report as files


def build_report_files(evaluation: Evaluation, info: RunInfo, *, qoe_table: QoEKind = "lin") -> dict[str, bytes]:
    """Every file of the report, name -> bytes, rendered in memory (plots, ``report.md``, ``results.json``)."""
    import json

    scores = evaluation.per_trace.get(qoe_table, {})
    cdf_plots: list[PlotFile] = []
    used: set[str] = set()
    for s in evaluation.trace_sets:
        name = _unique_file(f"cdf_{file_stem(s)}.png", used)
        per_policy = {p: list(scores.get(p, {}).get(s, {}).values()) for p in evaluation.policies}
        cdf_plots.append(
            PlotFile(
                name,
                f"CDF of per-trace QoE_{qoe_table} on {s}",
                plot_cdf(per_policy, traces=s, kind=qoe_table, optimal=evaluation.optimal),
            )
        )
    timeline: PlotFile | None = None
    if evaluation.timeline_trace is not None and evaluation.timeline:
        trace = evaluation.timeline_trace
        name = _unique_file(f"timeline_{file_stem(trace.name)}.png", used)
        png = plot_timeline(
            trace,
            evaluation.timeline,
            traces=evaluation.timeline_traces or "",
            ladder_kbps=evaluation.ladder_kbps,
            optimal=evaluation.optimal,
        )
        timeline = PlotFile(name, f"Timeline of trace {trace.name}", png)
    files = {p.name: p.png for p in cdf_plots}
    if timeline is not None:
        files[timeline.name] = timeline.png
    markdown = render_markdown(evaluation, info, qoe_table=qoe_table, cdf_plots=cdf_plots, timeline_plot=timeline)
    files["report.md"] = markdown.encode()
    document = results_document(evaluation, info, qoe_table=qoe_table)
    document["files"] = sorted([*files, "results.json"])
    files["results.json"] = (json.dumps(document, indent=2) + "\n").encode()
    return files


def _unique_file(name: str, used: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    candidate, i = name, 2
    while candidate in used:
        candidate = f"{stem}-{i}{dot}{ext}"
        i += 1
    used.add(candidate)
    return candidate


def write_report_files(out_dir: str | Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write every file atomically into ``out_dir`` (created if needed); ``results.json`` goes last.

    Writing the results last means a reader that finds ``results.json`` finds the complete report.
    """
    folder = Path(out_dir)
    order = sorted(files, key=lambda n: (n == "results.json", n == "report.md", n))
    written = []
    for name in order:
        write_atomic(folder / name, files[name])
        written.append(folder / name)
    return written
