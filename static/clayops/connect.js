// clayops "Connect Clay" page: copy buttons and plan presets. The page works without this file
// (select the text by hand; blank limits take the plan's values on the server).
// Under the Content-Security-Policy: no inline script, no eval; events are delegated from document,
// so buttons swapped in by htmx work too.
(function () {
  "use strict";

  function announce(text) {
    var live = document.querySelector("[data-copy-status]");
    if (live) live.textContent = text;
  }

  // Select the element's text, so Ctrl+C / Cmd+C copies it (the fallback when the clipboard API is
  // missing, as on plain http off localhost, or refused).
  function selectText(el) {
    var selection = window.getSelection();
    var range = document.createRange();
    range.selectNodeContents(el);
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function fallback(button, el) {
    selectText(el);
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    selectText(el); // keep the selection visible whatever execCommand did
    button.setAttribute("data-copied", copied ? "clipboard" : "selected");
    button.textContent = copied ? "Copied" : "Selected: press Ctrl+C";
    announce(copied ? "Copied to the clipboard." : "Text selected: press Ctrl+C (or Cmd+C) to copy it.");
  }

  function copy(button) {
    var el = document.getElementById(button.getAttribute("data-copy"));
    if (!el) return;
    var text = el.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () {
        button.setAttribute("data-copied", "clipboard");
        button.textContent = "Copied";
        announce("Copied to the clipboard.");
      }, function () { fallback(button, el); });
    } else {
      fallback(button, el);
    }
  }

  document.addEventListener("click", function (e) {
    var button = e.target && e.target.closest ? e.target.closest("button[data-copy]") : null;
    if (button) { e.preventDefault(); copy(button); }
  });

  // Plan presets: choosing a plan fills the rate, burst, hourly cap and row cap fields.
  function fillPreset(select) {
    var presets;
    try { presets = JSON.parse(select.getAttribute("data-presets") || "{}"); } catch (e) { return; }
    var values = presets[select.value];
    if (!values) return;
    Object.keys(values).forEach(function (name) {
      var input = select.form && select.form.elements.namedItem(name);
      if (!input) return;
      var value = values[name];
      input.value = value === null ? "0" : String(value); // hourly cap 0: none
    });
  }

  // An existing workspace keeps its own limits and budget: hide the new workspace's fields.
  function toggleWorkspace(select) {
    var form = select.form;
    if (!form) return;
    var existing = select.value !== "";
    form.querySelectorAll("[data-new-workspace]").forEach(function (group) {
      group.hidden = existing;
      group.querySelectorAll("input, select").forEach(function (input) { input.disabled = existing; });
    });
    var note = form.querySelector("[data-existing-workspace-note]");
    if (note) note.hidden = !existing;
  }

  document.addEventListener("change", function (e) {
    var target = e.target;
    if (!target || !target.form || !target.form.hasAttribute("data-connect-form")) return;
    if (target.name === "plan") fillPreset(target);
    if (target.name === "workspace") toggleWorkspace(target);
  });

  function init() {
    document.querySelectorAll("form[data-connect-form] select[name=workspace]").forEach(toggleWorkspace);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
