// The one way browser tests start Chromium: Debian's binary (CHROMIUM, set
// by internal/browsertest), headless, without the sandbox (tests run as
// root in CI, where Chromium refuses to start sandboxed). Nothing is ever
// downloaded: playwright-core only drives the binary it is given.
import { chromium } from "playwright-core";

export async function launch() {
  const executablePath = process.env.CHROMIUM;
  if (!executablePath) throw new Error("CHROMIUM is not set (run through internal/browsertest)");
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

// screenshot saves the page as ARTIFACTS/<name>.png and says where on
// stderr, which the Go side logs.
export async function screenshot(page, name) {
  const dir = process.env.ARTIFACTS;
  if (!dir) return;
  const path = `${dir}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  console.error(`screenshot: ${path}`);
}

// pageErrors collects what a page reports going wrong: uncaught
// exceptions, failed requests and console errors (a
// Content-Security-Policy violation is only a console error). The array
// fills as they happen.
export function pageErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  return errors;
}

// need returns the environment variable name, which the Go side sets;
// a missing one is the test's bug, said plainly.
export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}
