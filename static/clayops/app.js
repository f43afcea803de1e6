// clayops dashboard: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  // Cooldown countdowns: elements with data-deadline (epoch ms) count down every second.
  function fmt(seconds) {
    if (seconds <= 0) return "any moment";
    if (seconds < 60) return seconds + " s";
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m + " min" + (s ? " " + s + " s" : "");
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var deadline = parseInt(el.getAttribute("data-deadline"), 10);
      if (!isNaN(deadline)) el.textContent = fmt(Math.ceil((deadline - now) / 1000));
    });
  }
  setInterval(tick, 1000);

  // Drag and drop on the upload zone: the dropped file goes into the form's file input.
  function zone(el) { return el && el.closest ? el.closest("[data-dropzone]") : null; }
  function showName(z) {
    var input = z.querySelector("input[type=file]"), out = z.querySelector("[data-dropzone-name]");
    if (input && out) out.textContent = input.files.length ? input.files[0].name : "";
  }
  document.addEventListener("dragover", function (e) {
    var z = zone(e.target);
    if (z) { e.preventDefault(); z.classList.add("dragover"); }
  });
  document.addEventListener("dragleave", function (e) {
    var z = zone(e.target);
    if (z) z.classList.remove("dragover");
  });
  document.addEventListener("drop", function (e) {
    var z = zone(e.target);
    if (!z) return;
    e.preventDefault();
    z.classList.remove("dragover");
    var input = z.querySelector("input[type=file]");
    if (input && e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      showName(z);
    }
  });
  document.addEventListener("change", function (e) {
    var z = zone(e.target);
    if (z) showName(z);
  });

  // DLQ bulk selection: "select all", the selected count, and bulk buttons enabled only with a selection.
  function refreshBulk(form) {
    var boxes = form.querySelectorAll("input[name=ids]");
    var n = form.querySelectorAll("input[name=ids]:checked").length;
    var count = form.querySelector("[data-selected-count]");
    if (count) count.textContent = n + " selected";
    form.querySelectorAll("[data-bulk-action]").forEach(function (b) { b.disabled = n === 0; });
    var all = form.querySelector("[data-select-all]");
    if (all) { all.checked = boxes.length > 0 && n === boxes.length; all.indeterminate = n > 0 && n < boxes.length; }
  }
  function initBulk(root) {
    (root || document).querySelectorAll("form[data-bulk]").forEach(refreshBulk);
  }
  document.addEventListener("change", function (e) {
    var form = e.target.closest && e.target.closest("form[data-bulk]");
    if (!form) return;
    if (e.target.matches("[data-select-all]")) {
      form.querySelectorAll("input[name=ids]").forEach(function (b) { b.checked = e.target.checked; });
    }
    refreshBulk(form);
  });
  document.addEventListener("DOMContentLoaded", function () { initBulk(); tick(); });
  document.addEventListener("htmx:afterSwap", function () { initBulk(); tick(); });

  // htmx does not swap error responses: say what happened instead of failing silently.
  var toastTimer;
  function toast(text) {
    var el = document.getElementById("toast");
    if (!el) return;
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.hidden = true; }, 6000);
  }
  document.addEventListener("htmx:responseError", function (e) {
    var status = e.detail.xhr.status;
    if (status === 403) toast("Not allowed: only operators may do this (403).");
    else if (status === 401 || status === 302) toast("Your session ended: reload the page to log in again.");
    else toast("The server answered " + status + ": the page was not updated.");
  });
  document.addEventListener("htmx:sendError", function () {
    toast("clayops is not reachable: retrying on the next refresh.");
  });
})();
