// resin-abr core: what every player integration shares (dash.js: resin-abr.js, hls.js: resin-abr-hls.js,
// Shaka Player: resin-abr-shaka.js). It keeps one session's record, reports every downloaded video
// segment to abr_server and answers "which level for segment i?" from the server's decisions.
//
//   const session = ResinAbrCore.createSession(video, {config, mode: "server", sessionId, native: "hlsjs"});
//   session.segmentLoaded({index, level, bytes, requestStartMs, firstByteMs, endMs, bufferS});  // after each
//   session.choose(index, bufferS);  // -> {level, source}, once per index (later calls repeat the answer)
//
// Flow per video segment i: segmentLoaded POSTs its report to /v1/sessions/{sid}/decision and keeps the
// reply (tagged for_index = i + 1). When the player picks segment i + 1 it calls choose(i + 1): the kept
// decision if it arrived; otherwise the same report is sent again synchronously (the server answers a
// repeated report from its cache, so nothing is counted twice); if that fails too, the simulator's
// buffer-based rule decides locally. Every segment records where its level came from: initial, server,
// server-sync, fallback, or the player's own name when the player's ABR decides (mode "native").
// Times are milliseconds on the Date.now() clock; stalls are measured on the video element.
(function (global) {
  "use strict";

  function bufferBased(bufferS, config) {
    // The BB rule of the simulator's baselines: lowest level below the reservoir, highest above
    // reservoir + cushion, linear in between.
    const n = config.bitrates_kbps.length;
    const reservoir = config.fallback_reservoir_s;
    const cushion = config.fallback_cushion_s;
    if (bufferS <= reservoir) return 0;
    if (bufferS >= reservoir + cushion) return n - 1;
    return Math.floor(((bufferS - reservoir) / cushion) * (n - 1));
  }

  const THROUGHPUT_KEY = "resin-abr:last-throughput-kbps";

  function storedThroughputKbps() {
    try {
      const value = Number(window.localStorage.getItem(THROUGHPUT_KEY));
      return Number.isFinite(value) && value > 0 ? value : null;
    } catch (err) {
      return null; // no storage (private mode, a worker): no prior
    }
  }

  function storeThroughputKbps(kbps) {
    try {
      window.localStorage.setItem(THROUGHPUT_KEY, String(Math.round(kbps)));
    } catch (err) {
      // storage full or refused: the next session goes without a prior
    }
  }

  function nearestLevel(kbps, ladderKbps) {
    // The ladder level whose bitrate is closest to kbps.
    let best = 0;
    for (let i = 1; i < ladderKbps.length; i++) {
      if (Math.abs(ladderKbps[i] - kbps) < Math.abs(ladderKbps[best] - kbps)) best = i;
    }
    return best;
  }

  function byBitrate(items, bitsPerSecondOf) {
    // The items lowest bitrate first: position p in this list plays ladder level p.
    return items.slice().sort((a, b) => bitsPerSecondOf(a) - bitsPerSecondOf(b));
  }

  function bufferAheadS(ranges, timeS) {
    // Seconds buffered ahead of timeS in ranges (a TimeRanges or an array of {start, end}).
    const n = ranges ? ranges.length : 0;
    for (let i = 0; i < n; i++) {
      const start = typeof ranges.start === "function" ? ranges.start(i) : ranges[i].start;
      const end = typeof ranges.end === "function" ? ranges.end(i) : ranges[i].end;
      if (timeS >= start - 0.1 && timeS < end) return end - Math.max(timeS, start);
    }
    return 0;
  }

  function postSync(url, body) {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url, false); // synchronous on purpose: the player needs the level now
    xhr.setRequestHeader("content-type", "application/json");
    try {
      xhr.send(body);
    } catch (err) {
      return null;
    }
    if (xhr.status !== 200) return null;
    try {
      return JSON.parse(xhr.responseText);
    } catch (err) {
      return null;
    }
  }

  function createSession(video, options) {
    const config = options.config;
    const native = options.native || "native"; // the source label of the player's own decisions
    const mode = options.mode === "server" || !options.mode ? "server" : "native";
    const sessionId = options.sessionId;
    const decisionUrl = (options.origin || "") + "/v1/sessions/" + encodeURIComponent(sessionId) + "/decision";
    const ladder = config.bitrates_kbps;

    const counts = { initial: 0, server: 0, "server-sync": 0, fallback: 0 };
    counts[native] = 0;
    const state = {
      mode,
      player: native,
      sessionId,
      segments: [], // one record per completed video media segment, in order
      stalls: [], // {start_ms, end_ms} measured on the video element after playback started
      counts,
      decisions: {}, // for_index -> decision from the server
      chosen: {}, // index -> {level, source} as choose returned it
      reportErrors: 0,
      attachedMs: Date.now(),
      firstPlayingMs: null,
      endedMs: null,
      ended: false,
      error: null,
    };
    let lastIndex = -1;
    let lastReportBody = null;
    let lastThroughputBps = ladder[config.default_quality] * 1000;
    // What the player knew of its network before this session: options.priorKbps, else the last
    // throughput of its previous session on this origin, else the browser's estimate. Sent once.
    let priorKbps = options.priorKbps > 0 ? options.priorKbps : storedThroughputKbps();
    if (priorKbps === null && typeof navigator !== "undefined" && navigator.connection
        && navigator.connection.downlink > 0) {
      priorKbps = navigator.connection.downlink * 1000; // Mbit/s
    }
    let stallStart = null;
    let rebufferMs = 0;
    const listeners = [];

    function emit(record) {
      for (const fn of listeners) {
        try {
          fn(record, state);
        } catch (err) {
          console.error(err);
        }
      }
    }

    function remember(decision, source) {
      if (decision && typeof decision.for_index === "number") {
        decision.source = source;
        state.decisions[decision.for_index] = decision;
      }
    }

    function decide(index, bufferS) {
      if (index <= 0 || lastIndex < 0) return { level: config.default_quality, source: "initial" };
      if (index >= config.n_chunks) {
        return state.chosen[lastIndex] || { level: config.default_quality, source: "initial" }; // past the end
      }
      let decision = state.decisions[index];
      if (!decision && lastReportBody !== null) {
        const reply = postSync(decisionUrl, lastReportBody);
        if (reply && reply.for_index === index) {
          remember(reply, "server-sync");
          decision = reply;
        }
      }
      if (decision) return { level: decision.quality, source: decision.source };
      return { level: bufferBased(bufferS, config), source: "fallback" };
    }

    function choose(index, bufferS) {
      let pick = state.chosen[index];
      if (!pick) {
        pick = decide(index, bufferS);
        state.chosen[index] = pick;
      }
      return pick;
    }

    function segmentLoaded(segment) {
      // segment: {index, level, bytes, requestStartMs, firstByteMs, endMs, bufferS}; bufferS includes it.
      const { index, level, bytes } = segment;
      const startMs = segment.requestStartMs === undefined ? null : segment.requestStartMs;
      const firstByteMs = segment.firstByteMs === undefined ? null : segment.firstByteMs;
      const endMs = segment.endMs === undefined || segment.endMs === null ? Date.now() : segment.endMs;
      const pick = state.chosen[index];
      const source = mode === "native" ? native : pick ? pick.source : "untracked";
      const decision = state.decisions[index];
      state.counts[source] = (state.counts[source] || 0) + 1;
      const stalledMs = rebufferMs + (stallStart === null ? 0 : Date.now() - stallStart);
      const record = {
        index, level, bitrate_kbps: ladder[level], bytes, request_start_ms: startMs, first_byte_ms: firstByteMs,
        end_ms: endMs, buffer_s: segment.bufferS, rebuffer_ms: stalledMs,
        source, decided_level: decision ? decision.quality : null,
        policy: decision ? decision.policy : mode === "native" ? native : null,
      };
      state.segments.push(record);
      if (startMs !== null && endMs > startMs) {
        lastThroughputBps = (bytes * 8 * 1000) / (endMs - startMs);
        storeThroughputKbps(lastThroughputBps / 1000);
      }
      if (index <= lastIndex) {
        // A segment fetched again (a player may re-fetch one it switched away from before it was buffered):
        // recorded, not reported, since the server keeps one entry per segment.
        record.refetch = true;
        emit(record);
        return record;
      }
      lastIndex = index;
      if (mode === "server") {
        const report = { index, quality: level, bytes, buffer_s: segment.bufferS, rebuffer_ms: record.rebuffer_ms,
          request_start_ms: startMs, end_ms: endMs };
        if (priorKbps !== null) {
          report.prior_throughput_kbps = priorKbps;
          priorKbps = null;
        }
        if (firstByteMs !== null && startMs !== null && firstByteMs >= startMs && firstByteMs <= endMs) {
          report.first_byte_ms = firstByteMs;
        }
        lastReportBody = JSON.stringify(report);
        fetch(decisionUrl, { method: "POST", headers: { "content-type": "application/json" }, body: lastReportBody })
          .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
          .then((d) => { if (!state.decisions[d.for_index]) remember(d, "server"); })
          .catch((err) => { state.reportErrors += 1; console.warn("resin-abr report failed", err); });
      }
      emit(record);
      return record;
    }

    function fail(error) {
      if (state.error === null) {
        try {
          state.error = typeof error === "string" ? error : JSON.stringify(error);
        } catch (err) {
          state.error = String(error);
        }
      }
      emit(null);
    }

    video.addEventListener("playing", () => {
      const now = Date.now();
      if (state.firstPlayingMs === null) state.firstPlayingMs = now;
      if (stallStart !== null) {
        state.stalls.push({ start_ms: stallStart, end_ms: now });
        rebufferMs += now - stallStart;
        stallStart = null;
      }
    });
    video.addEventListener("waiting", () => {
      if (state.firstPlayingMs !== null && stallStart === null && !video.ended) stallStart = Date.now();
    });
    video.addEventListener("ended", () => {
      if (stallStart !== null) {
        state.stalls.push({ start_ms: stallStart, end_ms: Date.now() });
        stallStart = null;
      }
      state.endedMs = Date.now();
      state.ended = true;
      emit(null);
    });

    return {
      state,
      config,
      choose,
      segmentLoaded,
      fail,
      nextIndex() { return lastIndex + 1; },
      throughputBps() { return lastThroughputBps; },
      onSegment(fn) { listeners.push(fn); },
    };
  }

  global.ResinAbrCore = { createSession, bufferBased, nearestLevel, byBitrate, bufferAheadS };
})(window);
