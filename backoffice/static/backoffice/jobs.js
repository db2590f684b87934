// While a job on the page is queued, running or retrying, reload every 3 seconds so its
// progress bar moves; stop as soon as nothing on the page is active. A reload would drop what the
// user is doing, so none happens while a row is ticked or a field has the focus.
(function () {
  if (!document.querySelector('[data-job-active="1"]')) {
    return;
  }
  function busy() {
    var active = document.activeElement;
    var typing = active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) && active.type !== 'checkbox';
    return typing || document.querySelector('input[name="_selected_action"]:checked') !== null;
  }
  function tick() {
    if (busy()) {
      setTimeout(tick, 3000);
    } else {
      window.location.reload();
    }
  }
  setTimeout(tick, 3000);
})();
