// Plays a meshcast player page in headless Chromium (Debian's package,
// driven by playwright-core) and prints one JSON line: whether the video
// reached `ended`, the player's events and errors, the protocol each
// resource came over (`nextHopProtocol`, e.g. "h3"), and where each
// SourceBuffer's media starts (`sourceBuffers`: the A/V alignment as the
// player and the browser present it).
//   node tests/browser/play.mjs URL [timeout_seconds]
// Environment:
//   CHROMIUM_ARGS  extra Chromium flags (space-separated), e.g. to force QUIC
//   PLAYBACK_RATE  play faster once playing (long test clips)
//   CHECK_TYPES    '|'-separated MIME types with codecs: reported in
//                  `typeSupported` as MediaSource.isTypeSupported answers
//   PLAYS          play the page this many times in one browser; prints
//                  { plays, ended, failures } instead
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 60) * 1000;
const rate = Number(process.env.PLAYBACK_RATE || 1);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
         ...(process.env.CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
});

// Keeps every SourceBuffer a player makes, to report where its media starts.
function recordSourceBuffers() {
  window.__sourceBuffers = [];
  const add = MediaSource.prototype.addSourceBuffer;
  MediaSource.prototype.addSourceBuffer = function (type) {
    const sb = add.call(this, type);
    window.__sourceBuffers.push([type, sb]);
    return sb;
  };
}

async function playOnce(target) {
  const page = await browser.newPage();
  await page.addInitScript(recordSourceBuffers);
  await page.addInitScript((r) => {
    if (r === 1) return;
    document.addEventListener('playing', (e) => { e.target.playbackRate = r; }, true);
  }, rate);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  // Failed and refused requests, to say why a player stalled.
  const badRequests = [];
  page.on('requestfailed', (r) => badRequests.push(r.url().slice(-80) + ' ' + (r.failure() && r.failure().errorText)));
  page.on('response', (r) => { if (r.status() >= 400) badRequests.push(r.url().slice(-80) + ' ' + r.status()); });
  let result;
  try {
    await page.goto(target, { waitUntil: 'load' });
    await page.waitForFunction(() => window.meshcast && (window.meshcast.events.includes('ended') || window.meshcast.errors.length > 0), null, { timeout, polling: 200 });
    // With the proof-of-delivery plugin, wait for the last acks to be answered.
    await page.waitForFunction(() => !window.meshcast.acks || window.meshcast.events.includes('acks flushed') || window.meshcast.errors.length > 0,
      null, { timeout: 15000, polling: 100 }).catch(() => {});
    result = await page.evaluate((types) => ({
      acks: window.meshcast.acks || null,
      rtc: window.meshcast.rtc || null,
      ended: window.meshcast.events.includes('ended'),
      engine: window.meshcast.engine,
      events: window.meshcast.events,
      errors: window.meshcast.errors,
      protocols: performance.getEntriesByType('resource').map((e) => [e.name, e.nextHopProtocol]),
      currentTime: document.getElementById('v').currentTime,
      duration: document.getElementById('v').duration,
      sourceBuffers: window.__sourceBuffers.map(([type, sb]) => {
        try { return { type, start: sb.buffered.length ? sb.buffered.start(0) : null }; } catch (e) { return { type, start: null }; }
      }),
      typeSupported: Object.fromEntries(types.map((t) => [t, MediaSource.isTypeSupported(t)])),
    }), (process.env.CHECK_TYPES || '').split('|').filter(Boolean));
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
  await page.close();
  return result;
}

const plays = Number(process.env.PLAYS || 1);
let ok;
if (plays === 1) {
  const result = await playOnce(url);
  console.log(JSON.stringify(result));
  ok = result.ended && result.errors.length === 0;
} else {
  const failures = [];
  let ended = 0;
  for (let i = 0; i < plays; i++) {
    const r = await playOnce(url);
    if (r.ended && r.errors.length === 0) ended += 1;
    else failures.push({ play: i, currentTime: r.currentTime, duration: r.duration, buffered: r.buffered, errors: r.errors });
  }
  console.log(JSON.stringify({ plays, ended, failures }));
  ok = ended === plays;
}
await browser.close();
process.exit(ok ? 0 : 1);
