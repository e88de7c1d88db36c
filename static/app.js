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

  document.addEventListener("keyup", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("textarea, input, select, [contenteditable]")) return;
    const form = document.querySelector(".vote-form");
    if (!form || form.classList.contains("htmx-request")) return;
    // A key pressed right after a swap can beat htmx to the new form; process it first so the
    // vote still goes over htmx instead of a full page load (htmx.process is idempotent).
    if (window.htmx) window.htmx.process(form);
    const key = event.key.toLowerCase();
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
