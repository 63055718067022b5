// Progressive enhancement only: the page works without this file.
// A write form is submitted once: the button is disabled after the first submit (a double click never
// sends two requests; the server's conditional create is the real guarantee against duplicates).
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-once")) {
      return;
    }
    if (form.getAttribute("data-submitted") === "true") {
      event.preventDefault();
      return;
    }
    form.setAttribute("data-submitted", "true");
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.setAttribute("aria-disabled", "true");
      button.textContent = "Writing…";
    }
    form.setAttribute("aria-busy", "true");
  });
})();
