// The portal in a real browser: Debian's headless chromium driven by playwright-core,
// against a tap-cloud loaded from a replayed lab capture. Run by tests/browser.rs, which
// starts the cloud and passes, in the environment:
//   DCTAP_URL            the portal, e.g. http://127.0.0.1:41234
//   DCTAP_USER           an analyst's user name
//   DCTAP_PASSWORD       its password
//   DCTAP_OUT            the folder the screenshots go to
//   DCTAP_PLAYWRIGHT_DIR where playwright-core is installed (cargo xtask setup)
//   DCTAP_CHROMIUM       the browser binary (default /usr/bin/chromium)
// Each check prints "ok - ..."; the first failure prints "FAILED: ..." and exits 1. The line
// "waiting for new alerts" asks the test to replay another capture while the page is open.

import { createRequire } from 'node:module';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const base = env('DCTAP_URL');
const user = env('DCTAP_USER');
const password = env('DCTAP_PASSWORD');
const out = env('DCTAP_OUT');
// The workstation the lab's attacks come from.
const attacker = env('DCTAP_ATTACKER');
const require = createRequire(path.join(env('DCTAP_PLAYWRIGHT_DIR'), 'package.json'));
const { chromium } = require('playwright-core');

mkdirSync(out, { recursive: true });

function check(cond, what, detail = '') {
  if (!cond) throw new Error(`${what}${detail ? `: ${detail}` : ''}`);
  console.log(`ok - ${what}`);
}

let shots = 0;
async function shot(page, name) {
  shots += 1;
  const file = path.join(out, `${String(shots).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file} (${statSync(file).size} bytes)`);
}

const pathOf = (page) => new URL(page.url()).pathname;

const browser = await chromium.launch({
  executablePath: env('DCTAP_CHROMIUM', '/usr/bin/chromium'),
  // Root in a container has no user namespaces for chromium's sandbox.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  // Generous: the machine may be busy compiling beside the test.
  context.setDefaultTimeout(30000);
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  // 1. Nothing without a session: pages go to the sign-in form, the API answers 401.
  for (const p of ['/incidents', '/incidents/1', '/sensors', '/activity', '/accounts/alice', `/hosts/${attacker}`]) {
    await page.goto(base + p);
    check(pathOf(page) === '/login', `without a session ${p} redirects to the sign-in form`, page.url());
  }
  for (const p of ['/api/incidents', '/api/incidents/1', '/api/alerts', '/api/sensors', '/api/activity']) {
    const r = await context.request.get(base + p);
    check(r.status() === 401, `without a session GET ${p} is refused with 401`, String(r.status()));
  }
  const anonChange = await context.request.post(base + '/api/incidents/1', {
    data: { status: 'resolved' },
    failOnStatusCode: false,
  });
  check(anonChange.status() === 401, 'without a session a change is refused with 401', String(anonChange.status()));
  await shot(page, 'sign-in');

  // 2. A wrong password is refused on the form, with a message and no cookie.
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', 'not-the-password');
  await page.click('button:has-text("Sign in")');
  check((await page.textContent('main')).includes('Wrong user name or password'), 'a wrong password is refused');
  check(!(await context.cookies()).some((c) => c.name === 'dctap_session'), 'no session cookie after a refusal');

  // 3. Sign in through the form.
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForURL('**/incidents'), page.click('button:has-text("Sign in")')]);
  const cookie = (await context.cookies()).find((c) => c.name === 'dctap_session');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', 'signed in: HttpOnly, SameSite=Strict session cookie', JSON.stringify(cookie));
  check((await page.textContent('header')).includes(user), 'the header names the signed-in user');

  // 4. The incident for the Kerberoasting capture is in the list.
  const row = page.locator('table tr', { hasText: 'Kerberoasting' }).first();
  await row.waitFor();
  check((await row.textContent()).includes(attacker), 'the Kerberoasting incident is listed with the attacking host');
  const alertsBefore = Number(await row.locator('td.alerts').textContent());

  // 5. New alerts are announced without a reload: the test replays another capture of the
  // same attacker now (it waits for this line), whose alerts join the same incident.
  console.log('waiting for new alerts');
  const fresh = page.locator('#fresh');
  await fresh.waitFor({ state: 'visible', timeout: 60000 });
  check(/new alert/.test(await fresh.textContent()), 'new alerts are announced on the open page', await fresh.textContent());
  await shot(page, 'incidents');
  await Promise.all([page.waitForLoadState('load'), fresh.locator('a:has-text("Reload")').click()]);
  const alertsAfter = Number(await row.locator('td.alerts').textContent());
  check(alertsAfter > alertsBefore, `after the reload the incident has more alerts (${alertsBefore} -> ${alertsAfter})`);

  // 6. Its timeline: the alert's plain-language description, MITRE technique and evidence.
  await Promise.all([page.waitForURL(/\/incidents\/\d+$/), row.locator('a[href^="/incidents/"]').first().click()]);
  const incidentUrl = page.url();
  const incidentId = Number(pathOf(page).split('/').pop());
  const alert = page.locator('.timeline .alert', { hasText: 'Kerberoasting' }).first();
  await alert.waitFor();
  const alertText = await alert.textContent();
  check(alertText.includes('T1558.003'), 'the Kerberoasting alert shows its MITRE technique T1558.003');
  check(/service ticket|TGS|RC4/i.test(alertText), 'the alert describes what happened in plain language', alertText.slice(0, 300));
  await alert.locator('details summary').first().click();
  const evidence = alert.locator('details .event');
  check((await evidence.count()) > 0, 'the alert lists its evidence events');
  check((await evidence.first().textContent()).toLowerCase().includes('kerberos'), 'the evidence is the Kerberos traffic');
  await shot(page, 'incident');

  // 7. Change its status through the form (CSRF-protected) and see that it persisted.
  const form = page.locator('form.change');
  check((await form.locator('input[name=csrf]').inputValue()).length >= 32, 'the change form carries a CSRF token');
  await form.locator('select[name=status]').selectOption('in_progress');
  await form.locator('input[name=assignee]').fill(user);
  await form.locator('textarea[name=comment]').fill(`SPN tickets requested with RC4 from ${attacker}; checking the host.`);
  await Promise.all([
    page.waitForResponse((r) => r.url() === incidentUrl && r.request().method() === 'GET'),
    form.locator('button').click(),
  ]);
  await page.waitForLoadState('load');
  await page.reload();
  check((await page.textContent('.incident-status')).includes('in progress'), 'the status reads "in progress" after a reload');
  check((await page.textContent('.log')).includes('checking the host'), 'the comment is in the incident log');
  const api = await (await context.request.get(`${base}/api/incidents/${incidentId}`)).json();
  check(api.incident.status === 'in_progress' && api.assignee === user, 'the API returns the new status and assignee', JSON.stringify(api.incident));
  const forged = await context.request.post(`${base}/incidents/${incidentId}`, {
    form: { csrf: 'forged', status: 'resolved' },
    failOnStatusCode: false,
    maxRedirects: 0,
  });
  check(forged.status() === 403, 'a form post with a forged CSRF token is refused with 403', String(forged.status()));
  await shot(page, 'incident-in-progress');
  const list = await context.request.get(`${base}/api/incidents?status=in_progress`);
  check((await list.json()).incidents.some((i) => i.id === incidentId), 'the incident is listed under in_progress');

  // 7b. Never in a frame, not even one of the portal's own origin: a framed incident page
  // with its Save form could have a click steered onto it. A page of the portal's origin
  // (made up here by the test) frames the incident; the browser must refuse to show it.
  const framer = `${base}/framing-test`;
  await page.route(framer, (route) =>
    route.fulfill({
      contentType: 'text/html',
      body: `<!doctype html><title>framer</title><iframe id=victim src="/incidents/${incidentId}" width=900 height=500></iframe>`,
    })
  );
  const [framedResponse] = await Promise.all([
    page.waitForResponse((r) => r.url() === incidentUrl),
    page.goto(framer, { waitUntil: 'load' }),
  ]);
  const framedHeaders = await framedResponse.allHeaders();
  check(
    framedHeaders['x-frame-options'] === 'DENY' && /frame-ancestors 'none'/.test(framedHeaders['content-security-policy'] ?? ''),
    'the incident page forbids framing (X-Frame-Options DENY, frame-ancestors \'none\')',
    JSON.stringify(framedHeaders)
  );
  // A refused frame holds the browser's error page, of no origin the framer can read; a
  // shown one would be the portal's page with its form.
  const framedForms = await page.evaluate(() => {
    const doc = document.getElementById('victim').contentDocument;
    return doc ? doc.querySelectorAll('form').length : -1;
  });
  const victim = page.frames().find((f) => f !== page.mainFrame());
  check(framedForms <= 0, 'chromium does not render the incident page in a same-origin frame', `${framedForms} form(s), frame at ${victim?.url()}`);
  await page.unroute(framer);
  await page.goto(incidentUrl);

  // 8. The other main pages, reached through the links an analyst follows.
  await Promise.all([page.waitForURL(`**/hosts/${attacker}`), page.locator(`.timeline a[href="/hosts/${attacker}"]`).first().click()]);
  check((await page.textContent('main')).includes('Kerberoasting'), 'the host page lists the host\'s alerts');
  await shot(page, 'host');
  await Promise.all([page.waitForURL('**/accounts/alice'), page.locator('main a[href="/accounts/alice"]').first().click()]);
  check((await page.textContent('h1')).includes('alice'), 'the account page is for alice');
  check((await page.locator('.activity .event').count()) > 0, 'the account page shows its recent activity');
  await shot(page, 'account');
  await Promise.all([page.waitForURL('**/activity'), page.click('header a:has-text("Activity")')]);
  await page.selectOption('select[name=protocol]', 'kerberos');
  await page.fill('input[name=account]', 'alice');
  await Promise.all([page.waitForURL('**/activity?**'), page.click('main button:has-text("Search")')]);
  const found = await page.locator('.activity .event').count();
  check(found > 0, `the activity search finds alice's Kerberos events (${found})`);
  // The Kerberoasting scenario's seconds (UTC), after the benign logons'.
  const since = env('DCTAP_ATTACK_SINCE');
  const until = env('DCTAP_ATTACK_UNTIL');
  await page.fill('input[name=since]', since);
  await page.fill('input[name=until]', until);
  await Promise.all([page.waitForURL('**/activity?**until=**'), page.click('main button:has-text("Search")')]);
  const times = await page.locator('.activity .event td:first-child').allTextContents();
  check(
    times.length > 0 && times.length < found && times.every((t) => t.slice(0, 19) >= since && t.slice(0, 19) <= until),
    `a time range narrows the search to the Kerberoasting scenario, ${since} to ${until} (${times.length} events)`,
    times.join(', ')
  );
  await shot(page, 'activity');
  const missing = await page.goto(`${base}/incidents/999999`);
  check(
    missing.status() === 404 && (await page.textContent('h1')).includes('Not Found'),
    'an unknown incident is a 404 page, not raw JSON',
    `${missing.status()} ${await page.textContent('body')}`
  );
  await Promise.all([page.waitForURL('**/incidents'), page.click('a:has-text("Back to the incidents")')]);
  await Promise.all([page.waitForURL('**/sensors'), page.click('header a:has-text("Sensors")')]);
  check((await page.textContent('main table')).includes('lab'), 'the sensors page lists the lab sensor');
  await shot(page, 'sensors');
  check(pageErrors.length === 0, 'no script errors on any page', pageErrors.join('; '));

  // 9. Sign out: the cookie is cleared and the old session token is dead on the server.
  await Promise.all([page.waitForURL('**/login'), page.click('header button:has-text("Sign out")')]);
  check(!(await context.cookies()).some((c) => c.name === 'dctap_session'), 'signed out: the session cookie is gone');
  await page.goto(base + '/incidents');
  check(pathOf(page) === '/login', 'after signing out the incidents page redirects to sign-in');
  const replay = await context.request.get(base + '/api/incidents', { headers: { cookie: `dctap_session=${cookie.value}` } });
  check(replay.status() === 401, 'the old session token is refused after sign-out', String(replay.status()));
  await shot(page, 'signed-out');
} catch (e) {
  failed = true;
  console.log(`FAILED: ${e.message ?? e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
