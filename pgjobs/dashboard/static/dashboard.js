/* pgjobs dashboard: progressive enhancement only. Every page works without this file.
 *
 * - Live refresh: every data-refresh seconds, re-fetch this page and swap its
 *   [data-live] sections in place (no reload). Paused by the Live button (remembered)
 *   and while the tab is hidden; ticked checkboxes survive a refresh.
 * - Buttons with data-confirm ask first (and tick the form's "confirm" box).
 * - "Select all" checkboxes.
 */
(function () {
  "use strict";
  var STORAGE_KEY = "pgjobs.dashboard.live";
  var body = document.body;
  var period = Math.max(0.2, parseFloat(body.getAttribute("data-refresh")) || 3) * 1000;
  var toggle = document.getElementById("live-toggle");
  var paused = false;
  var inFlight = false;
  var timer = null;

  try { paused = window.localStorage.getItem(STORAGE_KEY) === "paused"; } catch (e) { /* private mode */ }

  function liveSections() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-live][id]"));
  }

  function render(state) {
    if (!toggle) { return; }
    toggle.hidden = liveSections().length === 0;
    toggle.setAttribute("aria-pressed", paused ? "false" : "true");
    toggle.className = "live " + state;
    toggle.textContent = paused ? "Paused" : (state === "stale" ? "Live (offline)" : "Live");
    toggle.title = paused ? "Auto-refresh is paused: click to resume"
                          : "Refreshing every " + (period / 1000) + " s: click to pause";
  }

  function checkedIds() {
    return Array.prototype.map.call(
      document.querySelectorAll("input[type=checkbox][name=id]:checked"),
      function (box) { return box.value; });
  }

  function restoreChecked(ids) {
    ids.forEach(function (id) {
      var box = document.querySelector('input[type=checkbox][name=id][value="' + CSS.escape(id) + '"]');
      if (box) { box.checked = true; }
    });
  }

  // Counters on <body> (data-live-ticks, data-live-fetches) let tests and curious
  // operators see that a paused or hidden page really stops fetching.
  function bump(name) {
    body.setAttribute(name, String((parseInt(body.getAttribute(name), 10) || 0) + 1));
  }

  function refresh() {
    if (paused || document.hidden || inFlight || liveSections().length === 0) { return; }
    inFlight = true;
    bump("data-live-fetches");
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-PGJobs-Live": "1" } })
      .then(function (response) {
        if (!response.ok || response.redirected) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var ticked = checkedIds();
        liveSections().forEach(function (section) {
          var replacement = fresh.getElementById(section.id);
          if (replacement) { section.replaceWith(document.adoptNode(replacement)); }
        });
        restoreChecked(ticked);
        enhance(document);
        render("ok");
      })
      .catch(function () { render("stale"); })
      .then(function () { inFlight = false; });
  }

  function schedule() {
    if (timer !== null) { window.clearInterval(timer); }
    timer = window.setInterval(function () { bump("data-live-ticks"); refresh(); }, period);
  }

  function enhance(root) {
    Array.prototype.forEach.call(root.querySelectorAll("input.pick-all"), function (all) {
      all.hidden = false;
      if (all.dataset.enhanced) { return; }
      all.dataset.enhanced = "1";
      all.addEventListener("change", function () {
        var table = all.closest("table");
        Array.prototype.forEach.call(table.querySelectorAll("input[type=checkbox][name=id]"),
          function (box) { box.checked = all.checked; });
      });
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-confirm]") : null;
    if (!button) { return; }
    if (!window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
      return;
    }
    var form = button.form;
    var box = form ? form.querySelector("input[name=confirm]") : null;
    if (box) { box.checked = true; }
  });

  if (toggle) {
    toggle.addEventListener("click", function () {
      paused = !paused;
      try { window.localStorage.setItem(STORAGE_KEY, paused ? "paused" : "live"); } catch (e) { /* ignore */ }
      render("ok");
      if (!paused) { refresh(); }
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });

  enhance(document);
  render("ok");
  schedule();
}());
