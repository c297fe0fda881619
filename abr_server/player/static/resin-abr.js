// resin-abr for dash.js 5: a custom ABR rule that plays the decisions of abr_server, and a tracker that
// records what the player saw (per-segment bitrate, download timing, buffer, stalls, decision source).
//
//   const session = ResinAbr.attach(player, video, {config, mode: "server", sessionId});
//
// Flow per video segment i: FRAGMENT_LOADING_COMPLETED -> the segment's report is POSTed to
// /v1/sessions/{sid}/decision -> the reply (tagged for_index = i + 1) is kept. When dash.js schedules
// segment i + 1 it asks the rule, which returns that decision with STRONG priority. If the reply has
// not arrived yet, the rule sends the same report synchronously (the server answers a repeated report
// from its cache, so nothing is counted twice); if that fails too, a local buffer-based choice is made.
// Every segment records where its level came from: initial, server, server-sync, fallback, dashjs.
(function (global) {
  "use strict";

  const STRONG = 1; // SwitchRequest.PRIORITY.STRONG
  const SYNC_TIMEOUT_MS = 1000;

  function sortedRepresentations(rulesContext) {
    const abr = rulesContext.getAbrController();
    const reps = abr.getPossibleVoRepresentationsFilteredBySettings(rulesContext.getMediaInfo(), true);
    return reps.slice().sort((a, b) => a.bandwidth - b.bandwidth);
  }

  function levelOf(representation, ladderKbps) {
    // The ladder level whose bitrate is closest to the representation's (the MPD lists kbit/s * 1000).
    const kbps = representation.bandwidth / 1000;
    let best = 0;
    for (let i = 1; i < ladderKbps.length; i++) {
      if (Math.abs(ladderKbps[i] - kbps) < Math.abs(ladderKbps[best] - kbps)) best = i;
    }
    return best;
  }

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

  function attach(player, video, options) {
    const config = options.config;
    const mode = options.mode || "server"; // "server": abr_server decides; "dashjs": dash.js's own rules
    const sessionId = options.sessionId;
    const decisionUrl = (options.origin || "") + "/v1/sessions/" + encodeURIComponent(sessionId) + "/decision";
    const ladder = config.bitrates_kbps;
    const events = global.dashjs.MediaPlayer.events;

    const state = {
      mode,
      sessionId,
      segments: [], // one record per completed video media segment, in order
      stalls: [], // {start_ms, end_ms} measured on the video element after playback started
      counts: { initial: 0, server: 0, "server-sync": 0, fallback: 0, dashjs: 0 },
      decisions: {}, // for_index -> decision from the server
      chosen: {}, // index -> {level, source} as the rule returned it
      reportErrors: 0,
      attachedMs: Date.now(),
      firstPlayingMs: null,
      endedMs: null,
      ended: false,
      error: null,
    };
    let lastIndex = -1;
    let lastReportBody = null;
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

    function syncDecision(body) {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", decisionUrl, false); // synchronous on purpose: the rule must answer now
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

    // ---- the rule ------------------------------------------------------------------------------
    function ResinServerRuleClass() {
      const context = this.context;
      const SwitchRequest = global.dashjs.FactoryMaker.getClassFactoryByName("SwitchRequest");

      function choose(index, bufferS) {
        if (index <= 0 || lastIndex < 0) return { level: config.default_quality, source: "initial" };
        let decision = state.decisions[index];
        if (!decision && lastReportBody !== null) {
          const reply = syncDecision(lastReportBody);
          if (reply && reply.for_index === index) {
            remember(reply, "server-sync");
            decision = reply;
          }
        }
        if (decision) return { level: decision.quality, source: decision.source };
        return { level: bufferBased(bufferS, config), source: "fallback" };
      }

      function getSwitchRequest(rulesContext) {
        const request = SwitchRequest(context).create();
        if (!rulesContext || rulesContext.getMediaType() !== "video") return request;
        const reps = sortedRepresentations(rulesContext);
        if (reps.length === 0) return request;
        const index = lastIndex + 1;
        let pick = state.chosen[index];
        if (!pick) {
          const bufferS = player.getDashMetrics().getCurrentBufferLevel("video") || 0;
          pick = choose(index, bufferS);
          state.chosen[index] = pick;
        }
        const level = Math.max(0, Math.min(reps.length - 1, pick.level));
        request.representation = reps[level];
        request.priority = STRONG;
        request.reason = { rule: "ResinServerRule", index, source: pick.source };
        return request;
      }

      return { getSwitchRequest };
    }
    ResinServerRuleClass.__dashjs_factory_name = "ResinServerRule";

    if (mode === "server") {
      const off = { active: false };
      player.updateSettings({
        streaming: {
          buffer: {
            fastSwitchEnabled: false,
            bufferTimeDefault: config.max_buffer_s,
            bufferTimeAtTopQuality: config.max_buffer_s,
            bufferTimeAtTopQualityLongForm: config.max_buffer_s,
          },
          abr: {
            initialBitrate: { video: ladder[config.default_quality] },
            rules: {
              throughputRule: off, bolaRule: off, insufficientBufferRule: off, switchHistoryRule: off,
              droppedFramesRule: off, abandonRequestsRule: off, l2ARule: off, loLPRule: off,
            },
          },
        },
      });
      player.addABRCustomRule(
        "qualitySwitchRules", "ResinServerRule", global.dashjs.FactoryMaker.getClassFactory(ResinServerRuleClass));
    }

    // ---- the tracker ---------------------------------------------------------------------------
    function onFragment(e) {
      const request = e.request;
      if (!request || request.mediaType !== "video" || request.type !== "MediaSegment" || e.error) return;
      const index = request.index;
      const level = levelOf(request.representation, ladder);
      const bytes = request.bytesLoaded || (e.response ? e.response.byteLength : 0);
      const startMs = request.startDate ? request.startDate.getTime() : null;
      const firstByteMs = request.firstByteDate ? request.firstByteDate.getTime() : null;
      const endMs = request.endDate ? request.endDate.getTime() : Date.now();
      // The simulator's buffer after a chunk includes that chunk; dash.js appends it only after this event.
      const bufferS = (player.getDashMetrics().getCurrentBufferLevel("video") || 0) + (request.duration || 0);
      const pick = state.chosen[index];
      const source = mode === "dashjs" ? "dashjs" : pick ? pick.source : "untracked";
      const decision = state.decisions[index];
      state.counts[source] = (state.counts[source] || 0) + 1;
      const record = {
        index, level, bitrate_kbps: ladder[level], bytes, request_start_ms: startMs, first_byte_ms: firstByteMs,
        end_ms: endMs, buffer_s: bufferS, rebuffer_ms: rebufferMs + (stallStart === null ? 0 : Date.now() - stallStart),
        source, decided_level: decision ? decision.quality : null,
        policy: decision ? decision.policy : mode === "dashjs" ? "dashjs" : null,
      };
      state.segments.push(record);
      lastIndex = index;
      if (mode === "server") {
        const report = { index, quality: level, bytes, buffer_s: bufferS, rebuffer_ms: record.rebuffer_ms,
          request_start_ms: startMs, end_ms: endMs };
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
    }
    player.on(events.FRAGMENT_LOADING_COMPLETED, onFragment);

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
    player.on(events.ERROR, (e) => { state.error = JSON.stringify(e.error || e); });

    return {
      state,
      onSegment(fn) { listeners.push(fn); },
    };
  }

  global.ResinAbr = { attach, bufferBased, levelOf };
})(window);
