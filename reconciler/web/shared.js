  // ---- shared by the status pages (reconciler/web/shared.js), inlined into each page's script
  const doc = document;
  const DASH = "\u2014";
  const RANK = { new: 0, pending: 64, assigned: 192, accepted: 256, preparing: 320, ready: 384,
    starting: 448, running: 512, complete: 576, shutdown: 640, failed: 704, rejected: 768,
    remove: 800, orphaned: 832 };
  const wordsEl = doc.getElementById("words");
  const WORDS = wordsEl ? JSON.parse(wordsEl.textContent) : {};
  let skew = 0;  // the server's clock minus ours, in ms
  const now = () => Date.now() + skew;

  function ago(iso) {
    if (!iso) return DASH;
    const s = Math.max(0, Math.floor((now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function utc(iso) {
    return iso ? new Date(Date.parse(iso)).toISOString().slice(0, 19).replace("T", " ") + " UTC"
      : "never";
  }
  function text(v) { return v === null || v === undefined || v === "" ? DASH : String(v); }
  function bytes(v) {
    if (v === null || v === undefined) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v + " B" : v.toFixed(1) + " " + units[i];
  }
  function labels(v) {
    const kv = Object.entries(v || {});
    return kv.length ? kv.map(([k, x]) => k + "=" + x).join(", ") : DASH;
  }
  const FORMAT = {
    text: text,
    bool: (v, e) => (v ? e.dataset.yes : e.dataset.no),  // coloured: good or bad
    flag: (v, e) => (v ? e.dataset.yes : e.dataset.no),  // plain words: neither is bad
    word: (v) => WORDS[v] || text(v),
    time: utc,
    ago: ago,
    bytes: bytes,
    labels: labels,
    reason: (v) => (!v || v === "ready" ? "" : v),
  };

  function el(tag, attrs, ...kids) {
    const e = doc.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function setText(e, t) { if (e.textContent !== t) e.textContent = t; }
  const badge = (s) => el("span", { class: "st s-" + s }, s);
  const code = (v, full) => (v ? el("code", full && full !== v ? { title: full } : {}, v) : DASH);
  const cell = (label, ...kids) => el("td", { "data-label": label }, ...kids);
  const since = (iso) => el("time", { class: "ago", datetime: iso || "" }, ago(iso));
  function message(i) {
    const out = [];
    if (i.error) out.push(el("span", { class: "err" }, "error: " + i.error));
    if (i.message && i.message !== i.error) out.push((out.length ? " " : "") + i.message);
    return out.length ? out : [DASH];
  }

  // Every element with data-k="object.key" shows that value of `state` in its data-f format.
  function fields(state) {
    for (const e of doc.querySelectorAll("[data-k]")) {
      const [part, key] = e.dataset.k.split(".");
      const v = (state[part] || {})[key];
      const f = e.dataset.f || "text";
      setText(e, FORMAT[f](v, e));
      if (f === "bool") { e.classList.toggle("ok", !!v); e.classList.toggle("bad", !v); }
      if (f === "word") e.className = "w-" + v;
      if (e.tagName === "TIME") e.dateTime = v || "";
    }
  }
  function icon(ok) {
    const link = doc.getElementById("icon");
    link.href = ok ? link.dataset.ok : link.dataset.bad;
  }

  // Row elements kept under `parent` by key, in the order `cmp` gives their keys (it may look
  // their items up in `items`). A key's place never changes, so a changed row replaces the
  // old one where it is.
  class Rows {
    constructor(parent, cmp) {
      this.parent = parent; this.cmp = cmp;
      this.keys = []; this.nodes = new Map(); this.items = new Map();
    }
    get size() { return this.nodes.size; }
    // a row already in place, in order (the server's, or one of a full state being built)
    adopt(key, node, item) {
      this.keys.push(key); this.nodes.set(key, node);
      if (item !== undefined) this.items.set(key, item);
    }
    put(key, item, node) {
      const old = this.nodes.get(key);
      this.items.set(key, item);
      if (old) {
        old.replaceWith(node);
      } else {
        let lo = 0, hi = this.keys.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (this.cmp(this.keys[mid], key) < 0) lo = mid + 1; else hi = mid;
        }
        const next = lo < this.keys.length ? this.nodes.get(this.keys[lo]) : null;
        this.keys.splice(lo, 0, key);
        this.parent.insertBefore(node, next);
      }
      this.nodes.set(key, node);
    }
    drop(key) {
      const node = this.nodes.get(key);
      if (!node) return;
      node.remove();
      this.nodes.delete(key); this.items.delete(key);
      this.keys.splice(this.keys.indexOf(key), 1);
    }
    clear() {
      for (const node of this.nodes.values()) node.remove();
      this.keys = []; this.nodes.clear(); this.items.clear();
    }
  }
  const byText = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  // Follow /v1/events: `apply` gets every event's object; durations tick every second.
  function live(apply) {
    let es = null, retryTimer = 0, hideTimer = 0, started = false;
    function status(value, cls) {
      const e = doc.getElementById("live");
      setText(e, value);
      e.className = cls;
    }
    function connect() {
      clearTimeout(retryTimer);
      if (es) return;
      const source = new EventSource("v1/events");
      es = source;
      status("Connecting\u2026", "");
      source.onopen = () => status("Live", "ok");
      source.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.now) skew = Date.parse(msg.now) - Date.now();
        apply(msg);
        if (!started) { started = true; performance.mark("reconciler:live"); }
      };
      source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) {
          source.close();
          if (es === source) es = null;
          status("Disconnected; retrying\u2026", "bad");
          retryTimer = setTimeout(connect, 10000);
        } else {
          status("Reconnecting\u2026", "bad");
        }
      };
    }
    function pause() {
      if (es) { es.close(); es = null; }
      status("Paused while the page is hidden", "");
    }
    doc.addEventListener("visibilitychange", () => {
      clearTimeout(hideTimer);
      if (doc.hidden) hideTimer = setTimeout(pause, 60000);
      else connect();
    });
    setInterval(() => {
      if (doc.hidden) return;
      for (const e of doc.querySelectorAll("time.ago")) setText(e, ago(e.dateTime));
    }, 1000);
    connect();
  }
  // ---- end of the shared part
