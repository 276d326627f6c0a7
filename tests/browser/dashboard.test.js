// The dashboard of `dmarc report serve` in a real browser: headless Chromium driven by
// playwright-core, the page loaded from loopback. Checks that the charts and tables show the
// ingested numbers, that a drill-down works, that nothing hostile from a report runs (no
// dialog, no request leaving the server) and keeps screenshots as test artefacts.
//
//   node dashboard.test.js BASE_URL EXPECTED_JSON SCREENSHOT_DIR
//
// EXPECTED_JSON is a file with the summary the page must agree with (written by the
// integration spec from `dmarc report summary --json`) plus {days, until, source}.
// Prints one line per check and "N passed, N failed"; exits 1 when a check failed.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [baseUrl, expectedFile, shotDir] = process.argv.slice(2);
if (!baseUrl || !expectedFile || !shotDir) {
  console.error('usage: node dashboard.test.js BASE_URL EXPECTED_JSON SCREENSHOT_DIR');
  process.exit(2);
}
const expected = JSON.parse(fs.readFileSync(expectedFile, 'utf8'));
const base = new URL(baseUrl);

let passed = 0;
let failed = 0;
function check(name, ok, detail) {
  if (ok) {
    passed += 1;
    console.log('ok - ' + name);
  } else {
    failed += 1;
    console.log('not ok - ' + name + (detail !== undefined ? ' (' + detail + ')' : ''));
  }
}

// Rounded down, as the dashboard shows shares: 84,889 of 84,890 is 99.9%, never 100.0%.
function pct(x) {
  let tenths = Math.floor(x * 1000 + 1e-9);
  if (tenths >= 1000 && x < 1) tenths = 999;
  return (tenths / 10).toFixed(1) + '%';
}

async function main() {
  fs.mkdirSync(shotDir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.DMARC_CHROMIUM || '/usr/bin/chromium',
    headless: true,
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const dialogs = [];
  const foreign = [];
  const consoleErrors = [];
  page.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.host !== base.host) foreign.push(r.url());
  });
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });

  // Index: the domain is listed and links to its page.
  let res = await page.goto(baseUrl, { waitUntil: 'load' });
  check('index answers 200', res.status() === 200, res.status());
  const link = page.locator('table#domains a', { hasText: expected.domain });
  check('index lists the domain', (await link.count()) === 1);

  // Domain page, for the period the expectations were computed over.
  const q = '?d=' + encodeURIComponent(expected.domain) + '&days=' + expected.days +
    '&until=' + expected.until;
  res = await page.goto(new URL('/domain' + q, baseUrl).toString(), { waitUntil: 'load' });
  check('domain page answers 200', res.status() === 200, res.status());
  const csp = res.headers()['content-security-policy'] || '';
  check('page is served with a strict CSP', csp.includes("default-src 'none'"), csp);

  const total = (await page.textContent('#total-messages')).trim();
  check('total messages shown', total === String(expected.messages), total);
  const rate = (await page.textContent('#pass-rate')).trim();
  check('DMARC pass rate shown', rate === pct(expected.pass_rate), rate);
  const reports = (await page.textContent('#report-count')).trim();
  check('report count shown', reports === String(expected.reports), reports);

  // Volume chart: one bar group per day, adding up to the total, drawn with height.
  const bars = page.locator('svg#volume-chart g.bar');
  check('volume chart has one bar per day', (await bars.count()) === expected.days,
        await bars.count());
  const barData = await bars.evaluateAll((gs) => gs.map((g) => ({
    day: g.getAttribute('data-day'),
    messages: Number(g.getAttribute('data-messages')),
    pass: Number(g.getAttribute('data-pass')),
    height: Array.from(g.querySelectorAll('rect'))
      .reduce((h, r) => h + r.getBoundingClientRect().height, 0),
  })));
  const barTotal = barData.reduce((s, b) => s + b.messages, 0);
  check('volume chart adds up to the total', barTotal === expected.messages, barTotal);
  const barPass = barData.reduce((s, b) => s + b.pass, 0);
  check('volume chart pass adds up to DMARC pass', barPass === expected.dmarc_pass, barPass);
  const byDay = {};
  for (const d of expected.daily) byDay[d.day] = d;
  check('each bar matches its day', barData.every((b) => byDay[b.day] &&
        byDay[b.day].messages === b.messages && byDay[b.day].dmarc_pass === b.pass));
  check('bars with messages are visible', barData.every((b) => b.messages === 0 || b.height > 1));
  const biggest = barData.reduce((a, b) => (b.messages > a.messages ? b : a), barData[0]);
  check('the biggest day has the tallest bar', barData.every((b) => b.height <= biggest.height + 0.5));

  // Pass-rate chart: a point per day with data, at the right rate.
  const points = await page.locator('svg#pass-rate-chart circle.point').evaluateAll((cs) =>
    cs.map((c) => ({ day: c.getAttribute('data-day'), rate: c.getAttribute('data-rate') })));
  const daysWithData = expected.daily.filter((d) => d.messages > 0);
  check('pass-rate chart has a point per day with data', points.length === daysWithData.length,
        points.length);
  check('pass-rate points show the daily rates', points.every((p) => byDay[p.day] &&
        (byDay[p.day].dmarc_pass * 100 / byDay[p.day].messages).toFixed(1) === p.rate));

  // Sources table.
  const rows = await page.locator('table#sources tbody tr').evaluateAll((trs) => trs.map((tr) => ({
    ip: tr.getAttribute('data-ip'),
    messages: Number(tr.getAttribute('data-messages')),
    shown: tr.children[1].textContent.trim(),
  })));
  check('sources table has the top sources', rows.length === expected.sources.length, rows.length);
  check('sources table in volume order with the numbers', rows.every((r, i) =>
    r.ip === expected.sources[i].ip && r.messages === expected.sources[i].messages &&
    r.shown === String(expected.sources[i].messages)));

  // Readiness verdict and the sources to fix first.
  const verdict = await page.getAttribute('#verdict', 'data-verdict');
  check('readiness verdict shown', verdict === expected.readiness.verdict, verdict);
  const fixRows = await page.locator('table#fix-first tbody tr').count();
  check('fix-first list shown', fixRows === expected.readiness.fix_first.length, fixRows);

  // Reporters, escaped: the hostile org name is text, not markup.
  const reporters = await page.locator('table#reporters tbody tr td:first-child').allTextContents();
  check('reporters table lists every reporter', reporters.length === expected.reporters.length,
        reporters.length);
  check('a hostile org name shows as text', reporters.some((t) => t.includes('<script>')));
  check('no script element came from a report', (await page.locator('main script').count()) === 0);

  await page.screenshot({ path: path.join(shotDir, 'dashboard.png'), fullPage: true });

  // Drill-down: click the source and check its records.
  if (expected.source) {
    await page.click('table#sources a:text-is("' + expected.source.ip + '")');
    await page.waitForSelector('#source-rows');
    const shown = (await page.textContent('#source-messages')).trim();
    check('drill-down shows the source volume', shown === String(expected.source.messages), shown);
    const counts = await page.locator('#source-rows tbody tr').evaluateAll((trs) =>
      trs.map((tr) => Number(tr.getAttribute('data-count'))));
    check('drill-down records add up', counts.reduce((a, b) => a + b, 0) ===
          expected.source.messages);
    check('drill-down has one row per record', counts.length === expected.source.rows,
          counts.length);
    await page.screenshot({ path: path.join(shotDir, 'source.png'), fullPage: true });
  }

  check('no dialog was opened by page content', dialogs.length === 0, dialogs.join(' | '));
  check('no request left the server', foreign.length === 0, foreign.join(' '));
  check('no console errors (CSP violations included)', consoleErrors.length === 0,
        consoleErrors.join(' | '));
  await browser.close();
}

main().catch((err) => {
  failed += 1;
  console.log('not ok - browser run (' + (err && err.message ? err.message : err) + ')');
}).finally(() => {
  console.log(passed + ' passed, ' + failed + ' failed');
  process.exitCode = failed > 0 ? 1 : 0;
});
