// The incidents page's announcement of new alerts, served as /static/incidents.js: the
// page's counts when it was rendered are on the #fresh element; the API is asked every
// data-poll-ms milliseconds and the difference shown.
const fresh = document.getElementById('fresh');
if (fresh) {
  const known = { incidents: Number(fresh.dataset.incidents), alerts: Number(fresh.dataset.alerts) };
  setInterval(async () => {
    const r = await fetch('/api/incidents');
    if (!r.ok) return;
    const list = (await r.json()).incidents;
    const a = list.reduce((sum, i) => sum + i.alerts, 0) - known.alerts;
    const n = list.length - known.incidents;
    if (a <= 0 && n <= 0) return;
    fresh.classList.add('shown');
    fresh.innerHTML = `<b>${a} new alert${a === 1 ? '' : 's'}</b>${n > 0 ? ` in ${n} new incident${n === 1 ? '' : 's'}` : ''}` +
      ' since this page was loaded. <a href="">Reload</a>';
  }, Number(fresh.dataset.pollMs));
}
