// The dashboard page (query/dashboard.py): one video and event type as a uPlot chart over a UTC
// range from GET /v1/stats, and the top list of a minute, hour or day from GET /v1/top.
// Times are UTC everywhere. The page's state is in its URL (?video=&type=&granularity=&metric=
// &from=&to=&top=&at=&follow=1) so a view can be bookmarked. "Follow now" moves the range to end at
// the current minute (keeping its length) and reloads both panels every <body data-refresh-s>
// seconds (10 unless set). For tests and the curious,
// window.viewcountsDashboard holds the chart, the last answers, and <body data-series-state /
// data-top-state> says "loading", "ok" or "error" for the newest request of each panel.
(function () {
  "use strict";
  const SIZES = { minute: 60, hour: 3600, day: 86400 };
  const TOP_N = 10;
  const $ = (id) => document.getElementById(id);
  const state = { chart: null, stats: null, top: null, seriesRequest: 0, topRequest: 0, follow: null };
  window.viewcountsDashboard = state;

  // "YYYY-MM-DDTHH:MM[:SS]" (a datetime-local value, read as UTC; or an RFC 3339 instant) <-> epoch seconds
  const toInput = (s) => new Date(s * 1000).toISOString().slice(0, 16);
  const fromInput = (v) => Date.parse(/(Z|[+-]\d\d:\d\d)$/.test(v) ? v : v.length <= 16 ? v + ":00Z" : v + "Z") / 1000;
  const iso = (s) => new Date(s * 1000).toISOString().replace(".000Z", "Z");
  // epoch seconds of a URL or form time, or fallback when it is none (or outside what Date holds)
  const isTime = (s) => Number.isFinite(s) && Math.abs(s) <= 8.64e12;
  const timeOr = (v, fallback) => (v && isTime(fromInput(v)) ? fromInput(v) : fallback);
  const nowS = () => Math.floor(Date.now() / 1000);
  const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
    : x.toLocaleString("en-US", { maximumFractionDigits: digits });

  function setStatus(panel, text, isError) {
    const el = $(panel + "-status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
    document.body.dataset[panel + "State"] = isError ? "error" : (text === "loading…" ? "loading" : "ok");
  }

  // The JSON body of a response, or throws Error(message) with the service's own error text.
  async function getJson(url) {
    let resp;
    try {
      resp = await fetch(url, { headers: { Accept: "application/json" } });
    } catch (e) {
      throw new Error("the service could not be reached: " + e.message);
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON: reported below */ }
    if (!resp.ok) {
      const message = body && (body.error || (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)));
      throw new Error(`HTTP ${resp.status}: ${message || resp.statusText}`);
    }
    if (body === null) throw new Error(`HTTP ${resp.status}: the answer is not JSON`);
    return body;
  }

  // [start, end) of the form, widened to whole buckets (the API never rounds a range).
  function seriesRange() {
    const size = SIZES[$("granularity").value];
    let start = fromInput($("from").value), end = fromInput($("to").value);
    start = Math.floor(start / size) * size;
    end = Math.max(Math.ceil(end / size) * size, start + size);
    return [start, end];
  }

  function saveUrl() {
    const p = new URLSearchParams();
    for (const id of ["video", "type", "granularity", "metric", "from", "to"]) p.set(id, $(id).value);
    p.set("top", $("top-granularity").value);
    if ($("top-at").value) p.set("at", $("top-at").value);
    if ($("follow").checked) p.set("follow", "1");
    history.replaceState(null, "", location.pathname + "?" + p.toString());
  }

  function drawChart(xs, ys, metric) {
    if (state.chart) state.chart.destroy();
    const box = $("chart");
    const opts = {
      width: Math.max(box.clientWidth, 300), height: 320,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true } },
      series: [
        { label: "UTC" },
        { label: metric, stroke: "#0b57d0", fill: "rgba(11,87,208,0.12)", width: 1.5,
          points: { show: xs.length <= 120 }, value: (u, v) => fmt(v) },
      ],
      axes: [{}, { label: metric, size: 60 }],
    };
    state.chart = new uPlot(opts, [xs, ys], box);
  }

  function showTotals(range, series) {
    const c = series.combined;
    const cells = { count: c.count, sum: c.sum, avg: c.avg, min: c.min, max: c.max };
    for (const [name, value] of Object.entries(cells)) {
      const el = $("total-" + name);
      el.textContent = fmt(value);
      el.dataset.value = value === null ? "" : String(value);
    }
    $("total-range").textContent = `${iso(range[0])} – ${iso(range[1])}`;
    $("total-final").textContent = series.final ? "yes" : "no (open tail read " + (series.read_at || "–") + ")";
    $("total-newest").textContent = series.newest_window
      ? `${series.newest_window} (opened ${series.newest_window_opened_at})` : "–";
  }

  async function loadSeries() {
    const video = $("video").value.trim(), type = $("type").value.trim();
    saveUrl();
    if (!video || !type) { setStatus("series", "pick a video (or click one in the top list) and an event type", true); return; }
    const granularity = $("granularity").value, metric = $("metric").value, range = seriesRange();
    const request = ++state.seriesRequest;
    if (!range.every(isTime)) { setStatus("series", "pick a From and a To (UTC)", true); return; }
    setStatus("series", "loading…");
    const q = new URLSearchParams({ video_id: video, event_type: type, function: metric, start: iso(range[0]),
                                    end: iso(range[1]), granularity });
    let body;
    try {
      body = await getJson("/v1/stats?" + q.toString());
    } catch (e) {
      if (request === state.seriesRequest) setStatus("series", e.message, true);
      return;
    }
    if (request !== state.seriesRequest) return;
    const series = body.series[0];
    state.stats = body;
    const xs = series.buckets.start.map((s) => Date.parse(s) / 1000);
    const ys = series.buckets[metric].map((v) => (v === null || Number.isNaN(v)) ? null : v);
    drawChart(xs, ys, metric);
    showTotals(range, series);
    setStatus("series", `${video} · ${type} · ${metric} per ${granularity} · ${xs.length} buckets`);
  }

  async function loadTop() {
    const type = $("type").value.trim() || "view", granularity = $("top-granularity").value;
    const at = $("top-at").value ? fromInput($("top-at").value) : nowS();
    saveUrl();
    const request = ++state.topRequest;
    setStatus("top", "loading…");
    $("top-n").textContent = `${TOP_N} ${type} · ${granularity}`;
    let body;
    try {
      body = await getJson("/v1/top?" + new URLSearchParams({ type, granularity, at: iso(at), n: String(TOP_N) }));
    } catch (e) {
      if (request === state.topRequest) { $("top-list").replaceChildren(); setStatus("top", e.message, true); }
      return;
    }
    if (request !== state.topRequest) return;
    state.top = body;
    const items = body.items.map((item) => {
      const li = document.createElement("li"), pick = document.createElement("button"), n = document.createElement("span");
      pick.type = "button";
      pick.textContent = item.video_id;
      pick.addEventListener("click", () => { $("video").value = item.video_id; loadSeries(); });
      n.className = "count";
      n.textContent = fmt(item.count, 0);
      li.append(pick, n);
      return li;
    });
    $("top-list").replaceChildren(...items);
    $("video-list").replaceChildren(...body.items.map((item) => new Option(item.video_id)));
    const when = `${body.window_start} – ${body.window_end}` + (body.final ? " (final)" : " (open)");
    setStatus("top", items.length ? when : `no ${type} events in ${when}`);
    if (!$("video").value && body.items.length) { $("video").value = body.items[0].video_id; loadSeries(); }
  }

  // One "follow now" step: the range ends at the current minute; the top panel reloads when it
  // shows "now" (At empty).
  function followStep() {
    const to = Math.ceil(nowS() / 60) * 60, length = timeOr($("to").value, to) - timeOr($("from").value, to - 3600);
    $("to").value = toInput(to);
    $("from").value = toInput(to - length);
    loadSeries();
    if (!$("top-at").value) loadTop();
  }

  function setFollow(on) {
    clearInterval(state.follow);
    state.follow = null;
    if (on) {
      followStep();
      state.follow = setInterval(followStep, 1000 * Number(document.body.dataset.refreshS || 10));
    } else {
      saveUrl();
    }
  }

  function init() {
    const p = new URLSearchParams(location.search);
    // URL values the form cannot hold (no such option, no time) keep the form's defaults
    for (const id of ["video", "type"]) if (p.get(id)) $(id).value = p.get(id);
    for (const [id, name] of [["granularity", "granularity"], ["metric", "metric"], ["top-granularity", "top"]]) {
      if ([...$(id).options].some((o) => o.value === p.get(name))) $(id).value = p.get(name);
    }
    const end = Math.ceil(nowS() / 60) * 60;
    $("from").value = toInput(timeOr(p.get("from"), end - 3600));
    $("to").value = toInput(timeOr(p.get("to"), end));
    if (timeOr(p.get("at"), null) !== null) $("top-at").value = toInput(timeOr(p.get("at"), null));
    $("follow").checked = p.get("follow") === "1";
    $("follow").addEventListener("change", () => setFollow($("follow").checked));
    $("series-form").addEventListener("submit", (e) => { e.preventDefault(); loadSeries(); });
    $("top-form").addEventListener("submit", (e) => { e.preventDefault(); loadTop(); });
    for (const b of document.querySelectorAll("[data-last]")) {
      b.addEventListener("click", () => {
        const last = Number(b.dataset.last), to = Math.ceil(nowS() / 60) * 60;
        $("granularity").value = last > 86400 ? "hour" : "minute";
        $("to").value = toInput(to);
        $("from").value = toInput(to - last);
        loadSeries();
      });
    }
    window.addEventListener("resize", () => {
      if (state.chart) state.chart.setSize({ width: Math.max($("chart").clientWidth, 300), height: 320 });
    });
    if ($("follow").checked) { setFollow(true); return; }
    if ($("video").value) loadSeries(); else setStatus("series", "pick a video (or click one in the top list)");
    loadTop();
  }

  init();
})();
