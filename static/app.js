// Draw every chart whose figure the server rendered into data-figure; again after each htmx swap.
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
  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches("[data-autosubmit]")) e.target.form.requestSubmit();
  });
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function () { draw(document); });
  window.addEventListener("load", function () { draw(document); });
})();
