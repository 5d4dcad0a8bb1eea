// The clinician view's behaviour on top of htmx: draw the charts the server rendered into data-figure, put the
// keyboard focus where a swap asks for it, and speak short sentences through the page's one stable live region.
(function () {
  function draw(root) {
    if (!window.Plotly) return;
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var fig = JSON.parse(el.dataset.figure);
      if (!fig) return;
      window.Plotly.newPlot(el, fig.data, fig.layout, fig.config);
      el.dataset.drawn = "1";
    });
  }

  // One polite live region (#announcer, in base.html) that no swap replaces. Emptied first, so the same sentence
  // twice is still read.
  function announce(text) {
    var region = document.getElementById("announcer");
    if (!region || !text) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 60);
  }

  // Focus without the sticky action bar covering what was focused.
  function focusAndReveal(el) {
    if (!el) return;
    if (!el.hasAttribute("tabindex") && !/^(A|BUTTON|INPUT|SELECT|TEXTAREA|SUMMARY)$/.test(el.tagName)) {
      el.setAttribute("tabindex", "-1");
    }
    el.focus({ preventScroll: true });
    var bar = document.querySelector(".actionbar");
    if (bar && bar.contains(el)) return;  // the bar is always in view
    var offset = bar ? bar.getBoundingClientRect().height + 8 : 8;
    var top = el.getBoundingClientRect().top;
    if (top < offset || top > window.innerHeight - 40) {
      window.scrollBy({ top: top - offset, behavior: "auto" });
    }
  }

  // data-focus-after on the element that made the request: a selector, or "heading" for the first heading of what
  // was swapped in (else the swapped region itself). Polls carry none, so they never move the focus.
  function focusAfterSwap(spec, region) {
    if (!spec) return;
    var el = spec === "heading" ? null : document.querySelector(spec);
    if (!el && region) el = region.querySelector("h1, h2, h3") || region;
    focusAndReveal(el);
  }

  // A sign-off's state is said once when it changes (its badge is swapped by every poll, so it is not itself a
  // live region): "Sign-off 12: confirmed".
  var states = {};
  function noteStates(root, speak) {
    root.querySelectorAll(".signoff-status[data-signoff]").forEach(function (el) {
      var id = el.dataset.signoff;
      var state = el.dataset.state;
      if (speak && id in states && states[id] !== state) {
        var label = el.querySelector(".badge");
        announce("Sign-off " + id + ": " + (label ? label.textContent.trim() : state) + ".");
      }
      states[id] = state;
    });
  }

  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;
    if (e.detail.xhr && elt && elt.getAttribute) e.detail.xhr.focusAfter = elt.getAttribute("data-focus-after");
  });
  // A swap nobody asked for (a poll bringing the fresh summary when the EHR read completes) keeps the focus where
  // it was: on the new element with the same id, without scrolling.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var target = e.detail.target;
    var active = document.activeElement;
    if (e.detail.xhr && target && active && active.id && active !== document.body && target.contains(active)) {
      e.detail.xhr.keepFocus = active.id;
    }
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    draw(document);
    var region = e.target;
    if (e.detail.xhr && e.detail.xhr.focusAfter) {
      focusAfterSwap(e.detail.xhr.focusAfter, region);
      e.detail.xhr.focusAfter = null;
    } else if (e.detail.xhr && e.detail.xhr.keepFocus) {
      var kept = document.getElementById(e.detail.xhr.keepFocus);
      if (kept && kept !== document.activeElement) kept.focus({ preventScroll: true });
    }
    if (e.detail.xhr) e.detail.xhr.keepFocus = null;
    if (region && region.dataset && region.dataset.announce) announce(region.dataset.announce);
    noteStates(document, true);
  });

  // Close the review: nothing to ask the server; the focus goes back to the button that opened it.
  document.addEventListener("click", function (e) {
    var close = e.target.closest && e.target.closest("[data-close-review]");
    if (!close) return;
    var box = document.getElementById("send-to-chart");
    if (!box) return;
    e.preventDefault();
    box.innerHTML = "";
    focusAndReveal(document.getElementById("send-button"));
    announce("Review closed: nothing was sent.");
  });

  document.addEventListener("DOMContentLoaded", function () {
    draw(document);
    noteStates(document, false);
  });
  window.addEventListener("load", function () { draw(document); });
})();
