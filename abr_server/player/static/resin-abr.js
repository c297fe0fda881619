// resin-abr for dash.js 5: a custom ABR rule that plays the decisions of abr_server, and a tracker that
// records what the player saw (per-segment bitrate, download timing, buffer, stalls, decision source).
// Needs resin-abr-core.js (the reports, decisions, fallback and stall tracking every player shares).
//
//   const session = ResinAbr.attach(player, video, {config, mode: "server", sessionId});
//
// Flow per video segment i: FRAGMENT_LOADING_COMPLETED -> the segment's report goes to the server
// (session.segmentLoaded). When dash.js schedules segment i + 1 it asks the rule, which returns
// session.choose(i + 1) with STRONG priority: the server's decision, a synchronous repeat of the report
// if the reply has not arrived, or the local buffer-based choice if the server does not answer.
// mode "dashjs" (or "native") leaves the decisions to dash.js's own rules and only records them.
(function (global) {
  "use strict";

  const STRONG = 1; // SwitchRequest.PRIORITY.STRONG
  const Core = global.ResinAbrCore;

  function sortedRepresentations(rulesContext) {
    const abr = rulesContext.getAbrController();
    const reps = abr.getPossibleVoRepresentationsFilteredBySettings(rulesContext.getMediaInfo(), true);
    return Core.byBitrate(reps, (rep) => rep.bandwidth);
  }

  function levelOf(representation, ladderKbps) {
    // The ladder level whose bitrate is closest to the representation's (the MPD lists kbit/s * 1000).
    return Core.nearestLevel(representation.bandwidth / 1000, ladderKbps);
  }

  function attach(player, video, options) {
    const config = options.config;
    const mode = options.mode === "server" || !options.mode ? "server" : "native";
    const session = Core.createSession(video, Object.assign({}, options, { mode, native: "dashjs" }));
    const ladder = config.bitrates_kbps;
    const events = global.dashjs.MediaPlayer.events;

    function bufferS() {
      return player.getDashMetrics().getCurrentBufferLevel("video") || 0;
    }

    // ---- the rule ------------------------------------------------------------------------------
    function ResinServerRuleClass() {
      const context = this.context;
      const SwitchRequest = global.dashjs.FactoryMaker.getClassFactoryByName("SwitchRequest");

      function getSwitchRequest(rulesContext) {
        const request = SwitchRequest(context).create();
        if (!rulesContext || rulesContext.getMediaType() !== "video") return request;
        const reps = sortedRepresentations(rulesContext);
        if (reps.length === 0) return request;
        const index = session.nextIndex();
        const pick = session.choose(index, bufferS());
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
      session.segmentLoaded({
        index: request.index,
        level: levelOf(request.representation, ladder),
        bytes: request.bytesLoaded || (e.response ? e.response.byteLength : 0),
        requestStartMs: request.startDate ? request.startDate.getTime() : null,
        firstByteMs: request.firstByteDate ? request.firstByteDate.getTime() : null,
        endMs: request.endDate ? request.endDate.getTime() : Date.now(),
        // The simulator's buffer after a chunk includes that chunk; dash.js appends it only after this event.
        bufferS: bufferS() + (request.duration || 0),
      });
    }
    player.on(events.FRAGMENT_LOADING_COMPLETED, onFragment);
    player.on(events.ERROR, (e) => session.fail(e.error || e));

    return session;
  }

  global.ResinAbr = { attach, levelOf, bufferBased: Core.bufferBased };
})(window);
