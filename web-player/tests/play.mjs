#!/usr/bin/env node
// Plays a Selfcast page in a real headless Chromium and checks that video time advances.
//
//   node tests/play.mjs <page-url> <screenshot.png> [seconds=5] [timeout_s=60]
//
// Waits until `document.querySelector('video').currentTime > seconds`, takes a screenshot,
// prints `screenshot: <path>` and one JSON line `{"currentTime":..,"ok":true,...}`, exits 0.
// On any failure prints the reason (with the page's console errors and video.error) and a JSON
// line with "ok":false, and exits 1.
//
// Uses the system Chromium (Debian's /usr/bin/chromium, or $CHROMIUM) through playwright-core:
// no browser download.
import { chromium } from 'playwright-core';

const [url, screenshot, secondsArg = '5', timeoutArg = '60'] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node play.mjs <page-url> <screenshot.png> [seconds=5] [timeout_s=60]');
  process.exit(1);
}
const seconds = Number(secondsArg);
const timeoutS = Number(timeoutArg);
if (!Number.isFinite(seconds) || !Number.isFinite(timeoutS) || timeoutS <= 0) {
  console.error(`bad seconds (${secondsArg}) or timeout (${timeoutArg})`);
  process.exit(1);
}

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const consoleErrors = [];
let browser;

try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`));

  const started = Date.now();
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutS * 1000 });
  const remainingMs = () => timeoutS * 1000 - (Date.now() - started);

  let probe = null;
  while (remainingMs() > 0) {
    probe = await page.evaluate(() => {
      const v = document.querySelector('video');
      const message = document.getElementById('message');
      return v
        ? {
            currentTime: v.currentTime,
            paused: v.paused,
            readyState: v.readyState,
            error: v.error ? { code: v.error.code, message: v.error.message } : null,
            videoWidth: v.videoWidth,
            videoHeight: v.videoHeight,
            message: message && !message.hidden ? message.textContent : null,
          }
        : null;
    });
    if (probe && probe.currentTime > seconds) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }

  if (!probe || !(probe.currentTime > seconds)) {
    throw new Error(
      `video did not pass ${seconds} s within ${timeoutS} s: ${JSON.stringify(probe)}` +
        `\nconsole errors:\n  ${consoleErrors.join('\n  ') || '(none)'}`,
    );
  }
  await page.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);
  console.log(
    JSON.stringify({
      currentTime: probe.currentTime,
      ok: true,
      videoWidth: probe.videoWidth,
      videoHeight: probe.videoHeight,
      elapsed_s: (Date.now() - started) / 1000,
      browser: browser.version(),
    }),
  );
  await browser.close();
  process.exit(0);
} catch (err) {
  console.error(`play.mjs: ${err && err.message ? err.message : err}`);
  console.log(JSON.stringify({ ok: false, error: String(err && err.message ? err.message : err) }));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
