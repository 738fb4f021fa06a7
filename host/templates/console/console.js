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
    events.addEventListener("approvals", () => refreshInbox(list));
    // After a reconnect, catch up with anything missed meanwhile.
    events.addEventListener("open", () => refreshInbox(list));
  }
  countDown();
  setInterval(countDown, 1000);
});
