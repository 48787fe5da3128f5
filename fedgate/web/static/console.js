/* fedgate consoles: live deadline countdowns and live queue updates.
 * Progressive enhancement: every page works without this file. No inline scripts (CSP). */
(function () {
  "use strict";

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function span(ms) {
    var s = Math.floor(Math.abs(ms) / 1000);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    return h + ":" + pad(m) + ":" + pad(s % 60);
  }

  function tick() {
    var now = Date.now();
    var nodes = document.querySelectorAll("[data-deadline]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var left = Date.parse(el.getAttribute("data-deadline")) - now;
      if (isNaN(left)) continue;
      var soon = parseInt(el.getAttribute("data-soon-ms") || "900000", 10);
      var label = left >= 0 ? el.getAttribute("data-left") : el.getAttribute("data-overdue");
      el.textContent = label + " " + span(left);
      var row = el.closest("tr") || el;
      row.classList.toggle("expiring", left >= 0 && left < soon);
      row.classList.toggle("overdue", left < 0);
    }
  }

  function poll(table) {
    var request = new XMLHttpRequest();
    request.open("GET", table.getAttribute("data-poll"));
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      if (request.status === 401) {
        window.location.reload();
        return;
      }
      if (request.status !== 200) return;
      var data;
      try {
        data = JSON.parse(request.responseText);
      } catch (e) {
        return;
      }
      if (data.version === table.getAttribute("data-version")) return;
      var focused = document.activeElement && document.activeElement.id;
      table.tBodies[0].innerHTML = data.rows;
      table.setAttribute("data-version", data.version);
      var summary = document.getElementById("queue-summary");
      if (summary) summary.textContent = data.summary;
      var announce = document.getElementById("queue-announce");
      if (announce) announce.textContent = data.announce;
      document.title = document.title.replace(/^\(\d+\) /, "");
      if (data.count > 0) document.title = "(" + data.count + ") " + document.title;
      if (focused) {
        var again = document.getElementById(focused);
        if (again) again.focus();
      }
      tick();
    };
    request.send();
  }

  function start() {
    tick();
    window.setInterval(tick, 1000);
    var table = document.getElementById("queue");
    if (table) {
      var every = parseInt(table.getAttribute("data-poll-ms") || "5000", 10);
      window.setInterval(function () {
        if (!document.hidden) poll(table);
      }, every);
      var hide = document.querySelectorAll(".js-hide");
      for (var i = 0; i < hide.length; i++) hide[i].hidden = true;
      var show = document.querySelectorAll(".js-only");
      for (var j = 0; j < show.length; j++) show[j].hidden = false;
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
