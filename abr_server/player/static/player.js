// The /player demo page: plays a manifest with dash.js, hls.js or Shaka Player (?player=dashjs|hlsjs|shaka),
// decisions from abr_server (or the player's own ABR: ?abr=native), and draws bitrate, buffer and
// throughput per segment with the source of every decision.
// Parameters: player, src (manifest URL; default per player, `mpd` also accepted), abr (server | native),
// sid (session id), autoplay (0 to wait for the play button).
// The page exposes its tracker as window.resinSession (read by `abr emulate`).
(async function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const playerName = params.get("player") || "dashjs";
  const option = document.querySelector('#player option[value="' + CSS.escape(playerName) + '"]');
  if (!option) {
    const known = [...document.querySelectorAll("#player option")].map((o) => o.value).join(", ");
    throw new Error("unknown player " + JSON.stringify(playerName) + " (one of " + known + ")");
  }
  const src = params.get("src") || params.get("mpd") || option.dataset.src;
  const abr = params.get("abr");
  const mode = abr === "native" || abr === "dashjs" ? "native" : "server"; // dashjs: the older name of native
  const sessionId = params.get("sid") || "web-" + Math.random().toString(36).slice(2, 12);
  const autoplay = params.get("autoplay") !== "0";
  document.getElementById("player").value = playerName;
  document.getElementById("src").value = src;
  document.getElementById("abr").value = mode;

  function loadScript(url) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = url;
      script.onload = resolve;
      script.onerror = () => reject(new Error("could not load " + url + " (is `make install` done?)"));
      document.head.appendChild(script);
    });
  }
  for (const url of option.dataset.scripts.split(/\s+/)) await loadScript(url);

  const SOURCE_COLOURS = {
    initial: "#888888", server: "#1f77b4", "server-sync": "#17becf", fallback: "#d62728", dashjs: "#ff7f0e",
    hlsjs: "#ff7f0e", shaka: "#ff7f0e",
  };
  const status = document.getElementById("status");
  const config = await (await fetch("/player/config.json")).json();

  function lineChart(id, label, unit) {
    return new Chart(document.getElementById(id), {
      type: "line",
      data: { labels: [], datasets: [{ label: label + " (" + unit + ")", data: [], stepped: true,
        pointRadius: 3, pointBackgroundColor: [], borderColor: "#555", borderWidth: 1 }] },
      options: { animation: false, aspectRatio: 3.5, scales: { x: { title: { display: true, text: "segment" } } } },
    });
  }
  const charts = {
    bitrate: lineChart("bitrate-chart", "bitrate", "kbit/s"),
    buffer: lineChart("buffer-chart", "buffer", "s"),
    throughput: lineChart("throughput-chart", "throughput", "Mbit/s"),
  };

  const video = document.getElementById("video");
  const options = { config, mode, sessionId };
  const players = {
    dashjs() {
      const player = dashjs.MediaPlayer().create();
      const session = ResinAbr.attach(player, video, options);
      return { session, start: async () => player.initialize(video, src, autoplay) };
    },
    hlsjs() {
      const session = ResinAbrHls.attach(Hls, video, options);
      return { session, start: async () => {
        video.autoplay = autoplay;
        session.hls.loadSource(src);
        session.hls.attachMedia(video);
      } };
    },
    shaka() {
      shaka.polyfill.installAll();
      const player = new shaka.Player();
      const session = ResinAbrShaka.attach(player, video, options);
      return { session, start: async () => {
        video.autoplay = autoplay;
        await player.attach(video);
        await player.load(src);
      } };
    },
  };
  const { session, start } = players[playerName]();
  window.resinSession = session.state;

  function render(record, state) {
    if (record) {
      const seconds = Math.max((record.end_ms - record.request_start_ms) / 1000, 1e-3);
      const values = { bitrate: record.bitrate_kbps, buffer: record.buffer_s,
        throughput: (record.bytes * 8) / seconds / 1e6 };
      for (const [name, chart] of Object.entries(charts)) {
        chart.data.labels.push(record.index);
        chart.data.datasets[0].data.push(values[name]);
        chart.data.datasets[0].pointBackgroundColor.push(SOURCE_COLOURS[record.source] || "#000");
        chart.update("none");
      }
    }
    const tbody = document.querySelector("#counts tbody");
    tbody.replaceChildren(...Object.entries(state.counts).filter(([, n]) => n > 0).map(([source, n]) => {
      const row = document.createElement("tr");
      row.innerHTML = "<td></td><td></td>";
      row.children[0].textContent = source;
      row.children[0].style.color = SOURCE_COLOURS[source] || "#000";
      row.children[1].textContent = String(n);
      return row;
    }));
    const stallS = state.stalls.reduce((s, x) => s + (x.end_ms - x.start_ms), 0) / 1000;
    status.textContent = "session " + state.sessionId + " · " + playerName + " · " + mode + " · " +
      state.segments.length + " segments · stalls " + state.stalls.length + " (" + stallS.toFixed(1) + " s)" +
      (state.ended ? " · ended" : "") + (state.error ? " · error: " + state.error : "");
  }
  session.onSegment(render);
  render(null, session.state);
  try {
    await start();
  } catch (err) {
    session.fail(err && err.code ? { code: err.code, category: err.category, data: err.data } : String(err));
  }
})().catch((err) => {
  document.getElementById("status").textContent = "error: " + err.message;
  window.resinSession = { error: String(err.message || err), ended: false, segments: [] };
});
