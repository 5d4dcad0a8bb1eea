// The SMART authorize request sent as a form POST (templates/launch/authorize_post.html): submit it at once.
(function () {
  var form = document.getElementById("authorize-post");
  if (form) form.submit();
})();
