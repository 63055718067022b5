// Progressive enhancement only: the page works without this file.
(function () {
  "use strict";
  // A write form is submitted once: the button is disabled after the first submit (a double click never
  // sends two requests; the server's conditional create is the real guarantee against duplicates).
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

  // Parts of a page loaded after it (data-src): whether this assessment is already in the chart. The page
  // never waits for them; without this script, the part's link opens the same answer as a page.
  var parts = document.querySelectorAll("[data-src]");
  Array.prototype.forEach.call(parts, function (part) {
    part.setAttribute("aria-busy", "true");
    fetch(part.getAttribute("data-src"), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("HTTP " + answer.status);
        }
        return answer.text();
      })
      .then(function (html) {
        part.innerHTML = html;
        part.setAttribute("data-loaded", "true");
      })
      .catch(function () {
        part.setAttribute("data-loaded", "failed");
      })
      .then(function () {
        part.removeAttribute("aria-busy");
      });
  });
})();
