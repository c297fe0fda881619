// resin-abr for hls.js 1.x: an abrController class that plays the decisions of abr_server, and a tracker
// that reports every loaded video fragment. Needs resin-abr-core.js.
//
//   const session = ResinAbrHls.attach(Hls, video, {config, mode: "server", sessionId});
//   session.hls.loadSource("/media/master.m3u8"); session.hls.attachMedia(video);
//
// hls.js reads its abrController's nextAutoLevel whenever it picks the level of the next fragment (and
// firstAutoLevel for the first one). Here both answer session.choose(i) for the next fragment i: the
// server's decision for it, a synchronous repeat of the last report if the reply is late, or the local
// buffer-based rule if the server does not answer. Each loaded main fragment (FRAG_LOADED) is reported
// with hls.js's own load timings. mode "native" keeps hls.js's own controller and only records.
// Level p of the ladder is the p-th hls.js level by bitrate (hls.js sorts its levels by height first).
(function (global) {
  "use strict";

  const Core = global.ResinAbrCore;

  function levelsByBitrate(hls) {
    // hls.js level indices, lowest bitrate first.
    const levels = hls.levels || [];
    return Core.byBitrate(levels.map((_, i) => i), (i) => levels[i].bitrate);
  }

  function epochMs(performanceMs) {
    // hls.js times loads on performance.now(); the session's clock is Date.now().
    return performanceMs > 0 ? performance.timeOrigin + performanceMs : null;
  }

  function abrControllerClass(session) {
    // An hls.js AbrComponentAPI whose every choice is session.choose for the next fragment.
    return class ResinAbrController {
      constructor(hls) {
        this.hls = hls;
      }

      levelFor(index) {
        const order = this.hls ? levelsByBitrate(this.hls) : [];
        if (order.length === 0) return 0;
        const info = this.hls.mainForwardBufferInfo;
        const pick = session.choose(index, info ? info.len : 0);
        return order[Math.max(0, Math.min(order.length - 1, pick.level))];
      }

      get firstAutoLevel() {
        return this.levelFor(0);
      }

      get forcedAutoLevel() {
        return -1; // no level is forced from outside: hls.js asks nextAutoLevel
      }

      get nextAutoLevel() {
        return this.levelFor(session.nextIndex());
      }

      set nextAutoLevel(level) {
        // hls.js writes back the level it switched to (and a lower one after load errors); the server
        // decides the next fragment regardless.
      }

      resetEstimator() {}

      destroy() {
        this.hls = null;
      }
    };
  }

  function attach(Hls, video, options) {
    const config = options.config;
    const mode = options.mode === "server" || !options.mode ? "server" : "native";
    const session = Core.createSession(video, Object.assign({}, options, { mode, native: "hlsjs" }));
    const hlsConfig = Object.assign({}, options.hlsConfig || {});
    if (mode === "server") {
      Object.assign(hlsConfig, {
        abrController: abrControllerClass(session),
        testBandwidth: false, // the first fragment is the server's initial level, not a bandwidth probe
        startLevel: -1, // -1: hls.js asks the controller's firstAutoLevel
        maxBufferLength: config.max_buffer_s,
        maxMaxBufferLength: config.max_buffer_s,
      });
    }
    const hls = new Hls(hlsConfig);

    hls.on(Hls.Events.FRAG_LOADED, (event, data) => {
      const frag = data.frag;
      if (!frag || frag.type !== "main" || typeof frag.sn !== "number" || frag.bitrateTest) return;
      const level = hls.levels[frag.level];
      if (!level || !level.details) return;
      const loading = frag.stats.loading;
      const info = hls.mainForwardBufferInfo;
      session.segmentLoaded({
        index: frag.sn - level.details.startSN,
        level: levelsByBitrate(hls).indexOf(frag.level),
        bytes: frag.stats.loaded || frag.stats.total,
        requestStartMs: epochMs(loading.start),
        firstByteMs: epochMs(loading.first),
        endMs: epochMs(loading.end) || Date.now(),
        // The simulator's buffer after a chunk includes that chunk; hls.js appends it after this event.
        bufferS: (info ? info.len : 0) + frag.duration,
      });
    });
    hls.on(Hls.Events.ERROR, (event, data) => {
      if (data.fatal) session.fail({ type: data.type, details: data.details, reason: String(data.reason || "") });
    });

    session.hls = hls;
    return session;
  }

  global.ResinAbrHls = { attach, abrControllerClass };
})(window);
