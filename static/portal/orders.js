/* My orders: amend (PATCH) and cancel (DELETE) through the REST API; the server's error is shown next to the row. */
(function () {
  "use strict";
  function csrf() { const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/); return m ? decodeURIComponent(m[1]) : ""; }
  function send(method, id, body, slot) {
    slot.textContent = "";
    return fetch("/api/v1/orders/" + id + "/", { method: method, credentials: "same-origin", headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() }, body: body ? JSON.stringify(body) : undefined })
      .then((r) => (r.ok ? location.reload() : r.json().then((d) => { slot.textContent = Object.entries(d).map(([k, v]) => (k === "detail" ? "" : k + ": ") + [].concat(v).join(" ")).join(" "); })))
      .catch(() => { slot.textContent = "?"; });
  }
  document.querySelectorAll("form.amend").forEach((form) => {
    const slot = form.querySelector(".error");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const body = {};
      if (form.price.value.trim()) body.price = form.price.value.trim();
      if (form.quantity.value.trim()) body.quantity = Number(form.quantity.value.trim());
      send("PATCH", form.dataset.order, body, slot);
    });
    form.querySelector("button.cancel").addEventListener("click", () => send("DELETE", form.dataset.order, null, slot));
  });
})();
