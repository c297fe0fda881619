// resin-abr for Shaka Player 5: an AbrManager (shaka.extern.AbrManager, installed with abrFactory) that
// plays the decisions of abr_server, and a tracker that reports every downloaded video segment. Needs
// resin-abr-core.js.
//
//   const session = ResinAbrShaka.attach(player, video, {config, mode: "server", sessionId});
//   await player.load("/media/manifest.mpd");
//
// Each video media segment's response goes through a networking-engine response filter, which reports
// it (Shaka's own request start and time to first byte). Once the segment is appended
// ("segmentappended"), the manager switches to session.choose(i + 1): the server's decision, a
// synchronous repeat of the report if the reply is late, or the local buffer-based rule if the server
// does not answer. Shaka fetches the next video segment only after that append, so the switch always
// lands before its request; video prefetching is turned off so no segment is requested ahead of its
// decision. chooseVariant (start-up, track changes) answers the same choice for the next segment.
// mode "native" keeps Shaka's own SimpleAbrManager and only records.
(function (global) {
  "use strict";

  const Core = global.ResinAbrCore;

  function indexOfTime(startS, config) {
    return Math.round(startS / config.chunk_duration_s);
  }

  class ResinAbrManager {
    // shaka.extern.AbrManager: every choice is session.choose for the next video segment.
    constructor(session, bufferS) {
      this.session = session;
      this.bufferS = bufferS;
      this.switchTo = null;
      this.variants = []; // one per video stream, lowest bitrate first
      this.enabled = false;
    }

    init(switchCallback) {
      this.switchTo = switchCallback;
    }

    stop() {
      this.switchTo = null;
      this.variants = [];
    }

    release() {
      this.stop();
    }

    setVariants(variants) {
      const byVideo = new Map();
      for (const variant of variants) {
        const key = variant.video ? variant.video.id : variant.id;
        if (!byVideo.has(key)) byVideo.set(key, variant);
      }
      this.variants = Core.byBitrate([...byVideo.values()], (v) => (v.video && v.video.bandwidth) || v.bandwidth);
      return true;
    }

    levelOfStream(stream) {
      return this.variants.findIndex((v) => v.video === stream);
    }

    variantFor(index) {
      if (this.variants.length === 0) return null;
      const pick = this.session.choose(index, this.bufferS());
      return this.variants[Math.max(0, Math.min(this.variants.length - 1, pick.level))];
    }

    chooseVariant() {
      return this.variantFor(this.session.nextIndex());
    }

    segmentAppended(startS) {
      // Segment i is in the buffer and Shaka has not asked for i + 1 yet: switch to its level now.
      const next = indexOfTime(startS, this.session.config) + 1;
      if (!this.enabled || !this.switchTo || next >= this.session.config.n_chunks) return;
      const variant = this.variantFor(next);
      if (variant) this.switchTo(variant, false);
    }

    enable() {
      this.enabled = true;
    }

    disable() {
      this.enabled = false;
    }

    segmentDownloaded() {} // reports come from the response filter, once per completed segment

    trySuggestStreams() {}

    getBandwidthEstimate() {
      return this.session.throughputBps();
    }

    playbackRateChanged() {}

    setMediaElement() {}

    setCmsdManager() {}

    configure() {}
  }

  function attach(player, video, options) {
    const config = options.config;
    const mode = options.mode === "server" || !options.mode ? "server" : "native";
    const session = Core.createSession(video, Object.assign({}, options, { mode, native: "shaka" }));
    const shaka = global.shaka;
    const MEDIA_SEGMENT = shaka.net.NetworkingEngine.AdvancedRequestType.MEDIA_SEGMENT;
    let manager = null;

    function bufferS() {
      const info = player.getBufferedInfo();
      return Core.bufferAheadS(info ? info.video : null, video.currentTime);
    }

    function levelOfStream(stream) {
      if (manager) return manager.levelOfStream(stream);
      const streams = new Map();
      for (const variant of player.getManifest() ? player.getManifest().variants : []) {
        if (variant.video) streams.set(variant.video.id, variant.video);
      }
      return Core.byBitrate([...streams.values()], (s) => s.bandwidth).indexOf(stream);
    }

    if (mode === "server") {
      player.configure({
        abrFactory: () => (manager = new ResinAbrManager(session, bufferS)),
        streaming: { bufferingGoal: config.max_buffer_s, disableVideoPrefetch: true },
      });
      player.addEventListener("segmentappended", (e) => {
        if (manager && e.contentType === "video") manager.segmentAppended(e.start);
      });
    }

    player.getNetworkingEngine().registerResponseFilter((type, response, context) => {
      if (!context || context.type !== MEDIA_SEGMENT || !context.stream || context.stream.type !== "video") return;
      if (response.fromCache || !context.segment) return;
      const endMs = Date.now();
      const request = response.originalRequest || {};
      const startMs = request.requestStartTime || (response.timeMs ? endMs - response.timeMs : null);
      const segment = context.segment;
      session.segmentLoaded({
        index: indexOfTime(segment.startTime, config),
        level: levelOfStream(context.stream),
        bytes: response.data.byteLength,
        requestStartMs: startMs,
        firstByteMs: startMs !== null && request.timeToFirstByte != null ? startMs + request.timeToFirstByte : null,
        endMs,
        // The simulator's buffer after a chunk includes that chunk; Shaka appends it after this filter.
        bufferS: bufferS() + (segment.endTime - segment.startTime),
      });
    });
    player.addEventListener("error", (e) => session.fail(e.detail || e));

    session.player = player;
    return session;
  }

  global.ResinAbrShaka = { attach, ResinAbrManager };
})(window);
