/* Instrument page: live book, depth, candles and tape from /ws/market/<id>/ (snapshot, then updates with
   seq and checksum; resync on a gap or a checksum mismatch; reconnect with back-off), the user's own
   orders and fills from /ws/user/, and the order ticket (validated here, then POST /api/v1/orders/). */
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("market-config").textContent);
  const T = JSON.parse(document.getElementById("market-text").textContent);
  const $ = (id) => document.getElementById(id);
  const lot = Number(cfg.lot_size);
  const label = (status) => cfg.labels[status] || status;
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  const fmt = (fenPerLot) => (fenPerLot / 100 / lot).toFixed(2);
  const book = { seq: 0, bids: new Map(), asks: new Map() };
  let tape = cfg.tape.map((t) => ({ seq: t.seq, price: fmt(t.price_fen_per_lot), fpl: t.price_fen_per_lot, quantity: t.quantity, side: t.taker_side, at: t.created_at }));
  let lastTradeSeq = tape.length ? tape[0].seq : 0;
  const candles = cfg.candles.slice();
  window.suanliMarket = { book: book, resyncs: 0, snapshots: 0 };  // read by the browser tests

  // --- crc32 checksum of the top ten levels, as docs/websockets.md defines it
  const CRC = new Uint32Array(256);
  for (let n = 0; n < 256; n++) { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; CRC[n] = c >>> 0; }
  function crc32(s) { let c = 0xffffffff; for (let i = 0; i < s.length; i++) c = CRC[(c ^ s.charCodeAt(i)) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; }
  const sortedBids = () => [...book.bids.entries()].sort((a, b) => b[0] - a[0]);
  const sortedAsks = () => [...book.asks.entries()].sort((a, b) => a[0] - b[0]);
  function checksum() {
    const b = sortedBids().slice(0, 10), a = sortedAsks().slice(0, 10), parts = [];
    for (let i = 0; i < Math.max(b.length, a.length); i++) {
      if (i < b.length) parts.push(b[i][0] + ":" + b[i][1]);
      if (i < a.length) parts.push(a[i][0] + ":" + a[i][1]);
    }
    return parts.length ? crc32(parts.join(":")) : 0;
  }

  // --- rendering
  const svgNS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, text) { const e = document.createElementNS(svgNS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
  function renderBook() {
    const b = sortedBids().slice(0, 10), a = sortedAsks().slice(0, 10), rows = [];
    for (let i = 0; i < Math.max(b.length, a.length, 1); i++) {
      const tr = document.createElement("tr");
      const cells = [b[i] ? b[i][1] : "", b[i] ? fmt(b[i][0]) : "", a[i] ? fmt(a[i][0]) : "", a[i] ? a[i][1] : ""];
      cells.forEach((v, j) => { const td = document.createElement("td"); td.className = "num " + (j < 2 ? "bid" : "ask"); td.textContent = v; tr.appendChild(td); });
      rows.push(tr);
    }
    $("book-rows").replaceChildren(...rows);
    $("book-seq").textContent = book.seq;
    renderDepth(b, a);
  }
  function renderDepth(b, a) {
    const svg = $("depth"); svg.replaceChildren();
    if (!b.length && !a.length) { svg.appendChild(el("text", { x: 200, y: 80, "text-anchor": "middle", class: "muted" }, "—")); return; }
    const prices = [...b.map((l) => l[0]), ...a.map((l) => l[0])], lo = Math.min(...prices), hi = Math.max(...prices);
    let cum = 0; const bc = b.map((l) => [l[0], (cum += l[1])]); cum = 0; const ac = a.map((l) => [l[0], (cum += l[1])]);
    const maxQ = Math.max(1, ...bc.map((l) => l[1]), ...ac.map((l) => l[1]));
    const x = (p) => 10 + (hi === lo ? 190 : ((p - lo) / (hi - lo)) * 380), y = (q) => 150 - (q / maxQ) * 135;
    const path = (pts, start) => { let d = "M" + x(start) + ",150"; pts.forEach(([p, q]) => { d += " L" + x(p) + "," + y(q); }); return d + " L" + x(pts.length ? pts[pts.length - 1][0] : start) + ",150 Z"; };
    if (bc.length) svg.appendChild(el("path", { d: path(bc, bc[0][0]), class: "bid-area" }));
    if (ac.length) svg.appendChild(el("path", { d: path(ac, ac[0][0]), class: "ask-area" }));
    svg.appendChild(el("text", { x: 10, y: 158, class: "axis" }, fmt(lo)));
    svg.appendChild(el("text", { x: 390, y: 158, "text-anchor": "end", class: "axis" }, fmt(hi)));
    svg.appendChild(el("text", { x: 10, y: 12, class: "axis" }, String(maxQ)));
  }
  function renderCandles() {
    const svg = $("candles"); svg.replaceChildren();
    const cs = candles.slice(-40);
    if (!cs.length) { svg.appendChild(el("text", { x: 200, y: 80, "text-anchor": "middle", class: "muted" }, "—")); return; }
    const lo = Math.min(...cs.map((c) => c.low)), hi = Math.max(...cs.map((c) => c.high)), w = 380 / Math.max(cs.length, 10);
    const y = (p) => (hi === lo ? 80 : 145 - ((p - lo) / (hi - lo)) * 130);
    cs.forEach((c, i) => {
      const cx = 10 + i * w + w / 2, up = c.close >= c.open;
      svg.appendChild(el("line", { x1: cx, x2: cx, y1: y(c.high), y2: y(c.low), class: up ? "up" : "down" }));
      svg.appendChild(el("rect", { x: cx - w * 0.35, width: w * 0.7, y: Math.min(y(c.open), y(c.close)), height: Math.max(1, Math.abs(y(c.open) - y(c.close))), class: up ? "up" : "down" }));
    });
    svg.appendChild(el("text", { x: 398, y: 12, "text-anchor": "end", class: "axis" }, fmt(hi)));
    svg.appendChild(el("text", { x: 398, y: 158, "text-anchor": "end", class: "axis" }, fmt(lo)));
  }
  function renderTape() {
    const rows = tape.slice(0, 30).map((t) => {
      const tr = document.createElement("tr"); tr.dataset.seq = t.seq;
      [new Date(t.at).toLocaleTimeString(), t.price, t.quantity, T[t.side] || t.side].forEach((v, j) => { const td = document.createElement("td"); td.textContent = v; if (j === 1 || j === 2) td.className = "num"; if (j === 3) td.className = t.side; tr.appendChild(td); });
      return tr;
    });
    $("tape-rows").replaceChildren(...rows);
    if (tape.length) $("last-price").textContent = tape[0].price;
  }
  function addTrade(t) {
    if (t.seq <= lastTradeSeq) return;
    lastTradeSeq = t.seq; tape.unshift(t);
    const start = Math.floor(Date.parse(t.at) / 1000 / 3600) * 3600, last = candles[candles.length - 1];
    if (last && last.start === start) { last.high = Math.max(last.high, t.fpl); last.low = Math.min(last.low, t.fpl); last.close = t.fpl; last.volume += t.quantity; }
    else candles.push({ start: start, open: t.fpl, high: t.fpl, low: t.fpl, close: t.fpl, volume: t.quantity });
  }
  function refetchTape() {  // trades are not replayed after a snapshot: read the tape again
    fetch("/api/v1/trades/?instrument=" + cfg.instrument).then((r) => r.json()).then((data) => {
      (data.results || []).slice().reverse().forEach((r) => addTrade({ seq: r.seq, price: r.price, fpl: Math.round(Number(r.price) * 100 * lot), quantity: r.quantity, side: r.taker_side, at: r.created_at }));
      renderTape(); renderCandles();
    }).catch(() => {});
  }

  // --- market socket
  let market = null, attempts = 0;
  function setState(state) { const b = $("feed-state"); b.dataset.state = state; b.textContent = T[state] || state; }
  function resync() { window.suanliMarket.resyncs++; if (market && market.readyState === 1) market.send(JSON.stringify({ type: "resync" })); }
  function onMarket(ev) {
    const m = JSON.parse(ev.data);
    if (m.type === "snapshot") {
      window.suanliMarket.snapshots++;
      book.seq = m.seq; book.bids = new Map(m.bids_fen_per_lot); book.asks = new Map(m.asks_fen_per_lot);
      if (m.status) $("inst-status").textContent = label(m.status);
      renderBook(); setState("live"); attempts = 0;
      if (m.trade_seq > lastTradeSeq) refetchTape();
    } else if (m.type === "book") {
      if (m.first !== book.seq + 1) { if (m.seq > book.seq) resync(); return; }
      m.updates.forEach((u) => { const side = u.side === "buy" ? book.bids : book.asks; if (u.quantity) side.set(u.price_fen_per_lot, u.quantity); else side.delete(u.price_fen_per_lot); });
      book.seq = m.seq;
      if (checksum() !== m.checksum) { resync(); return; }
      renderBook();
    } else if (m.type === "trade") {
      addTrade({ seq: m.trade_seq, price: m.price, fpl: m.price_fen_per_lot, quantity: m.quantity, side: m.taker_side, at: m.at });
      renderTape(); renderCandles();
    } else if (m.type === "ticker") {
      $("last-price").textContent = m.last;
    } else if (m.type === "status") {
      $("inst-status").textContent = label(m.event.status);
    } else if (m.type === "heartbeat") {
      if (m.seq > book.seq) resync();
    }
  }
  function connectMarket() {
    market = new WebSocket(wsBase + "/ws/market/" + cfg.instrument + "/");
    window.suanliMarket.socket = market;
    market.onmessage = onMarket;
    market.onclose = () => { setState("reconnecting"); attempts++; setTimeout(connectMarket, Math.min(500 * 2 ** attempts, 10000)); };
  }

  // --- user socket: own orders and fills
  function upsertOrder(o) {
    const body = $("my-orders"); if (!body || o.instrument !== cfg.instrument) return;
    let tr = body.querySelector('tr[data-order="' + o.id + '"]');
    if (!tr) {
      tr = document.createElement("tr"); tr.dataset.order = o.id;
      [o.id, T[o.side] || o.side, o.price || "", o.quantity, "", ""].forEach((v, j) => { const td = document.createElement("td"); td.textContent = v; if (j === 4) td.dataset.field = "filled"; if (j === 5) td.dataset.field = "status"; if (j >= 2 && j <= 4) td.className = "num"; tr.appendChild(td); });
      body.prepend(tr);
    }
    tr.querySelector('[data-field="filled"]').textContent = o.filled_quantity;
    tr.querySelector('[data-field="status"]').textContent = label(o.status);
  }
  function addFill(o, f) {
    const list = $("my-fills"); if (!list) return;
    if (list.querySelector('[data-trade="' + f.trade + '"][data-order="' + o.id + '"]')) return;
    const li = document.createElement("li"); li.dataset.trade = f.trade; li.dataset.order = o.id;
    li.textContent = T.filled + ": " + (T[o.side] || o.side) + " " + f.quantity + " @ " + f.price + " (#" + o.id + ")";
    list.prepend(li);
  }
  let userAttempts = 0;
  function connectUser() {
    if (!cfg.signed_in || !$("my-orders")) return;
    const ws = new WebSocket(wsBase + "/ws/user/");
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "welcome") {
        userAttempts = 0;  // events are not replayed: catch up over REST
        fetch("/api/v1/orders/?instrument=" + cfg.instrument).then((r) => r.json()).then((d) => (d.results || []).forEach(upsertOrder)).catch(() => {});
      } else if (m.type === "order") {
        upsertOrder(m);
        (m.fills || []).forEach((f) => addFill(m, f));
      }
    };
    ws.onclose = (ev) => { if (ev.code === 4401) return; userAttempts++; setTimeout(connectUser, Math.min(500 * 2 ** userAttempts, 10000)); };
  }

  // --- order ticket
  function cents(raw) {  // "15.3" -> 1530; null when not a number with at most two decimals
    const m = /^\s*(\d+)(?:\.(\d{1,2}))?\s*$/.exec(raw || "");
    return m ? Number(m[1]) * 100 + Number(((m[2] || "") + "00").slice(0, 2)) : null;
  }
  function csrf() { const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/); return m ? decodeURIComponent(m[1]) : ""; }
  function clearErrors(form) { form.querySelectorAll(".error").forEach((e) => { e.textContent = ""; }); form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid")); }
  function showError(field, text) {
    const slot = $("err-" + field) || $("err-form"); slot.textContent = (slot.textContent ? slot.textContent + " " : "") + text;
    const input = document.querySelector('#ticket [name="' + field + '"]'); if (input) input.setAttribute("aria-invalid", "true");
  }
  function validate(form) {
    const side = form.side.value, price = cents(form.price.value), qtyRaw = form.quantity.value.trim(), qty = Number(qtyRaw), errors = {};
    const tick = cents(cfg.tick), lowC = cents(cfg.band_low), highC = cents(cfg.band_high);
    if (!form.price.value.trim()) errors.price = T.required;
    else if (price === null || price <= 0 || price % tick !== 0) errors.price = T.tick + " (" + cfg.tick + ").";
    else if (price < lowC || price > highC) errors.price = T.band + " (" + cfg.band_low + "–" + cfg.band_high + ").";
    if (!qtyRaw) errors.quantity = T.required;
    else if (!/^\d+$/.test(qtyRaw) || qty < cfg.min_lots || qty > cfg.max_lots) errors.quantity = T.lot + " " + cfg.min_lots + "–" + cfg.max_lots + ".";
    if (side === "sell" && form.listing && !form.listing.value) errors.listing = T.listing;
    if (side === "buy" && !errors.price && !errors.quantity && cfg.available_fen !== null) {
      const value = Math.round(price * lot) * qty, fee = Math.ceil((value * cfg.taker_fee_bps) / 10000);
      $("t-cost").textContent = "¥" + ((value + fee) / 100).toFixed(2);
      if (value + fee > cfg.available_fen) errors.form = T.funds;
    }
    return errors;
  }
  function setupTicket() {
    const form = $("ticket"); if (!form) return;
    const sideChanged = () => { form.classList.toggle("selling", form.side.value === "sell"); };
    form.querySelectorAll('input[name="side"]').forEach((r) => r.addEventListener("change", sideChanged)); sideChanged();
    form.addEventListener("submit", (ev) => {
      ev.preventDefault(); clearErrors(form); $("t-result").textContent = "";
      const errors = validate(form);
      if (Object.keys(errors).length) { Object.entries(errors).forEach(([f, t]) => showError(f, t)); return; }
      const body = { instrument: cfg.instrument, side: form.side.value, price: form.price.value.trim(), quantity: Number(form.quantity.value), client_order_id: "web-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8), organisation: cfg.organisation };
      if (body.side === "sell" && form.listing && form.listing.value) body.listing = Number(form.listing.value);
      $("t-submit").disabled = true;
      fetch("/api/v1/orders/", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() }, body: JSON.stringify(body) })
        .then((r) => r.json().then((data) => ({ ok: r.ok, data: data })))
        .then(({ ok, data }) => {
          if (ok) { $("t-result").textContent = T.placed + " #" + data.id + " (" + label(data.status) + ")"; upsertOrder(data); return; }
          if (data.detail) showError("form", data.detail);
          Object.entries(data).forEach(([f, msgs]) => { if (f !== "detail") showError(["price", "quantity", "side", "listing"].includes(f) ? f : "form", [].concat(msgs).join(" ")); });
          if (!form.querySelector(".error:not(:empty)")) showError("form", T.failed);
        })
        .catch(() => showError("form", T.failed))
        .finally(() => { $("t-submit").disabled = false; });
    });
  }

  renderBook(); renderTape(); renderCandles(); setupTicket(); connectMarket(); connectUser();
})();
