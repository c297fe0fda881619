// The /player demo page: plays an MPD with dash.js, decisions from abr_server (or dash.js's own rules),
// and draws bitrate, buffer and throughput per segment with the source of every decision.
// The page exposes its tracker as window.resinSession (read by `abr emulate`).
(async function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const mpd = params.get("mpd") || "/media/manifest.mpd";
  const mode = params.get("abr") === "dashjs" ? "dashjs" : "server";
  const sessionId = params.get("sid") || "web-" + Math.random().toString(36).slice(2, 12);
  document.getElementById("mpd").value = mpd;
  document.getElementById("abr").value = mode;

  const SOURCE_COLOURS = {
    initial: "#888888", server: "#1f77b4", "server-sync": "#17becf", fallback: "#d62728", dashjs: "#ff7f0e",
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
  const player = dashjs.MediaPlayer().create();
  const session = ResinAbr.attach(player, video, { config, mode, sessionId });
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
    status.textContent = "session " + state.sessionId + " · " + mode + " · " + state.segments.length +
      " segments · stalls " + state.stalls.length + " (" + stallS.toFixed(1) + " s)" + (state.ended ? " · ended" : "");
  }
  session.onSegment(render);
  player.initialize(video, mpd, params.get("autoplay") !== "0");
  render(null, session.state);
})().catch((err) => {
  document.getElementById("status").textContent = "error: " + err;
  window.resinSession = { error: String(err), ended: false, segments: [] };
});
