// Plays a meshcast player page in headless Chromium (Debian's package,
// driven by playwright-core) and prints one JSON line: whether the video
// reached `ended`, the player's events and errors, and the protocol each
// resource came over (`nextHopProtocol`, e.g. "h3").
//   node tests/browser/play.mjs URL [timeout_seconds]
// CHROMIUM_ARGS adds Chromium flags (space-separated), e.g. to force QUIC.
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 60) * 1000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
         ...(process.env.CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
});
const page = await browser.newPage();
const consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
page.on('pageerror', (e) => consoleErrors.push(String(e)));
// Failed and refused requests, to say why a player stalled.
const badRequests = [];
page.on('requestfailed', (r) => badRequests.push(r.url().slice(-80) + ' ' + (r.failure() && r.failure().errorText)));
page.on('response', (r) => { if (r.status() >= 400) badRequests.push(r.url().slice(-80) + ' ' + r.status()); });
let result;
try {
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.meshcast && (window.meshcast.events.includes('ended') || window.meshcast.errors.length > 0), null, { timeout, polling: 200 });
  // With the proof-of-delivery plugin, wait for the last acks to be answered.
  await page.waitForFunction(() => !window.meshcast.acks || window.meshcast.events.includes('acks flushed') || window.meshcast.errors.length > 0,
    null, { timeout: 15000, polling: 100 }).catch(() => {});
  result = await page.evaluate(() => ({
    acks: window.meshcast.acks || null,
    ended: window.meshcast.events.includes('ended'),
    engine: window.meshcast.engine,
    events: window.meshcast.events,
    errors: window.meshcast.errors,
    protocols: performance.getEntriesByType('resource').map((e) => [e.name, e.nextHopProtocol]),
    currentTime: document.getElementById('v').currentTime,
    duration: document.getElementById('v').duration,
  }));
} catch (e) {
  // Where the player stood when it stalled: position, duration, and what
  // each SourceBuffer range holds.
  const where = await page.evaluate(() => {
    const v = document.getElementById('v');
    const ranges = (r) => Array.from({ length: r.length }, (_, i) => [r.start(i), r.end(i)]);
    return {
      events: window.meshcast && window.meshcast.events,
      currentTime: v.currentTime, duration: v.duration, readyState: v.readyState,
      buffered: ranges(v.buffered),
    };
  }).catch(() => ({}));
  result = { ended: false, errors: [String(e)], ...where };
}
result.consoleErrors = consoleErrors;
result.badRequests = badRequests;
console.log(JSON.stringify(result));
await browser.close();
process.exit(result.ended && result.errors.length === 0 ? 0 : 1);
