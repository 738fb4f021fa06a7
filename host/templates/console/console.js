// The Arbiter console's only script: the approvals inbox follows the
// server's events without a reload, and time left counts down. Every page
// works without it.
"use strict";

function refreshInbox(list) {
  // Keep what the person is typing across the update.
  const typed = {};
  list.querySelectorAll("[data-keep]").forEach((el) => {
    if (el.value) typed[el.dataset.keep] = el.value;
  });
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.keep : undefined;
  return fetch("/console/approvals?fragment=list", { credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((html) => {
      list.innerHTML = html;
      list.querySelectorAll("[data-keep]").forEach((el) => {
        if (typed[el.dataset.keep]) el.value = typed[el.dataset.keep];
        if (focused && el.dataset.keep === focused) el.focus();
      });
      countDown();
    })
    .catch(() => {});
}

function countDown() {
  const now = Date.now();
  document.querySelectorAll("[data-expires]").forEach((el) => {
    const left = Math.max(0, Number(el.dataset.expires) - now);
    const s = Math.floor(left / 1000);
    el.textContent = left === 0 ? "no time" : s < 60 ? s + "s"
      : s < 3600 ? Math.floor(s / 60) + "m " + (s % 60) + "s"
      : Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("approvals-list");
  if (list && window.EventSource) {
    const events = new EventSource("/console/events");
    // Once a form is sent the page is on its way out: the answer itself
    // raises an event, and redrawing the list then would pull the form
    // out from under its own submission.
    let leaving = false;
    const leave = () => { leaving = true; events.close(); };
    document.addEventListener("submit", leave);
    window.addEventListener("pagehide", leave);
    const refresh = () => { if (!leaving) refreshInbox(list); };
    events.addEventListener("approvals", refresh);
    // After a reconnect, catch up with anything missed meanwhile.
    events.addEventListener("open", refresh);
  }
  countDown();
  setInterval(countDown, 1000);
});
