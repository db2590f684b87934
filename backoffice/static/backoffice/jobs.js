// While a job on the page is queued, running or retrying, reload every 3 seconds so its
// progress bar moves; stop as soon as nothing on the page is active.
(function () {
  if (document.querySelector('[data-job-active="1"]')) {
    setTimeout(function () { window.location.reload(); }, 3000);
  }
})();
