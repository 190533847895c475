// flow's pages work without this file; it only keeps them live.
// - <body data-refresh="N">: reload every N seconds (a run in progress), unless the person is
//   typing in a form or has a <details> open.
// - <pre id="log" data-src data-offset data-complete="false">: append the log as the try writes it.
(function () {
  "use strict";

  function busy() {
    var el = document.activeElement;
    if (el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT")) {
      return true;
    }
    return document.querySelector("details[open]") !== null;
  }

  function refresh() {
    var secs = parseInt(document.body.getAttribute("data-refresh") || "", 10);
    if (!(secs > 0)) {
      return;
    }
    window.setTimeout(function again() {
      if (busy()) {
        window.setTimeout(again, secs * 1000);
      } else {
        window.location.reload();
      }
    }, secs * 1000);
  }

  function tail() {
    var log = document.getElementById("log");
    if (!log || log.getAttribute("data-complete") === "true") {
      return;
    }
    var src = log.getAttribute("data-src");
    var offset = parseInt(log.getAttribute("data-offset") || "0", 10);
    function poll() {
      fetch(src + "&offset=" + offset, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (!r.ok) {
            throw new Error("HTTP " + r.status);
          }
          return r.json();
        })
        .then(function (chunk) {
          if (chunk.content) {
            // Text, never markup: a log line cannot become HTML.
            log.appendChild(document.createTextNode(chunk.content));
          }
          offset = chunk.next_offset;
          log.setAttribute("data-offset", String(offset));
          if (chunk.complete) {
            log.setAttribute("data-complete", "true");
            // The try is over: reload once for its final state, tries and output.
            window.setTimeout(function () { window.location.reload(); }, 300);
          } else {
            window.setTimeout(poll, 1000);
          }
        })
        .catch(function () {
          window.setTimeout(poll, 3000);
        });
    }
    window.setTimeout(poll, 500);
  }

  document.addEventListener("DOMContentLoaded", function () {
    refresh();
    tail();
  });
})();
