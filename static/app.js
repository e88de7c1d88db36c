// Keyboard shortcuts and time-on-task for the comparison page.
// Shortcuts press the real buttons (data-key), so htmx and the plain form behave the same.
(function () {
  "use strict";
  let shownAt = performance.now();
  document.addEventListener("htmx:afterSwap", () => { shownAt = performance.now(); });

  document.addEventListener("submit", (event) => {
    const field = event.target.querySelector("[data-time-spent]");
    if (field) field.value = Math.round(performance.now() - shownAt);
  }, true);
  document.addEventListener("htmx:configRequest", (event) => {
    if ("time_spent_ms" in event.detail.parameters || event.detail.elt.closest(".vote-form")) {
      event.detail.parameters.time_spent_ms = Math.round(performance.now() - shownAt);
    }
  });

  // The edit page: Ctrl+Enter (Cmd+Enter) in the textarea saves, as the Save button does.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const form = event.target.closest("[data-edit-form]");
    if (form) { event.preventDefault(); form.requestSubmit(); }
  });

  document.addEventListener("keyup", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("textarea, input, select, [contenteditable]")) return;
    const key = event.key.toLowerCase();
    if (key === "g") {  // the guidelines panel beside the pair
      const panel = document.querySelector("[data-guidelines]");
      if (panel) panel.open = !panel.open;
      return;
    }
    if (document.querySelector("#pair .htmx-request")) return;  // one request at a time
    // A key pressed right after a swap can beat htmx to the new forms; process them first so they
    // still go over htmx instead of a full page load (htmx.process is idempotent).
    const pair = document.querySelector("#pair");
    if (pair && window.htmx) pair.querySelectorAll("form").forEach((f) => window.htmx.process(f));
    const last = document.querySelector("[data-last-vote]");
    if (key === "z" && last) {
      const undo = last.querySelector("[data-undo]");
      if (undo) undo.click();
      return;
    }
    const form = document.querySelector(".vote-form");
    if (!form) return;
    if (key === "e") {  // to the "Edit A" link (Tab: "Edit B"); Enter opens the edit page
      const edit = document.querySelector("[data-edit]");
      if (edit) edit.focus();
      return;
    }
    if (key === "f") {  // open the flag form, its first reason focused
      const flag = document.querySelector("[data-flag]");
      if (flag) { flag.open = true; const first = flag.querySelector("[data-flag-first]"); if (first) first.focus(); }
      return;
    }
    // Right after a vote for A or B, 5-7 say how much better its winner was (strength after the
    // choice); once it has one, they pick the strength of the next vote again.
    if (last && !last.hasAttribute("data-has-strength")) {
      const amend = last.querySelector(`[data-last-strength="${key}"]`);
      if (amend) { amend.click(); return; }
    }
    const strength = { "5": "1", "6": "2", "7": "3" }[key];
    if (strength) {
      const radio = form.querySelector(`input[name=strength][value="${strength}"]`);
      if (radio) radio.checked = !radio.checked;
      return;
    }
    const button = form.querySelector(`button[data-key="${key}"]`);
    if (button && !button.disabled) button.click();
  });
})();
