// A dashboard page outlives its node (as during make bench, which starts a
// fresh node per run on the same ports): open DASHBOARD_URL, kill the
// node (KILL_PID), start its replacement (NODE_CMD, a JSON argv) and wait,
// without a reload, until the page is live again and names the new node.
// Prints the timings as one JSON line.
import { spawn } from "node:child_process";
import { launch, need } from "./launch.mjs";

const nodeCmd = JSON.parse(need("NODE_CMD"));

const browser = await launch();
let replacement;
const result = { pageErrors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  let navigations = 0;
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations++; });
  await page.goto(need("DASHBOARD_URL"));
  await page.waitForFunction(() => document.querySelector("#stream")?.textContent === "live", null, { timeout: 10000 });
  result.before = await page.textContent("#node");
  navigations = 0;

  process.kill(Number(need("KILL_PID")), "SIGKILL");
  await page.waitForFunction(() => document.querySelector("#stream").textContent === "reconnecting", null, { timeout: 10000, polling: 50 });
  const started = Date.now();
  replacement = spawn(nodeCmd[0], nodeCmd.slice(1), { stdio: ["ignore", "ignore", "inherit"] });
  await page.waitForFunction((before) => document.querySelector("#stream").textContent === "live" && document.querySelector("#node").textContent !== before,
    result.before, { timeout: 15000, polling: 50 });
  result.liveAgainAfterSeconds = (Date.now() - started) / 1000;
  result.after = await page.textContent("#node");
  result.reloads = navigations;
} finally {
  if (replacement && replacement.exitCode === null) replacement.kill("SIGKILL");
  await browser.close();
}
console.log(JSON.stringify(result));
