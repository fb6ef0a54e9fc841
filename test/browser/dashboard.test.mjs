// The dashboard of a node under load, read from the page as an operator
// sees it (cmd/switchboard TestDashboardInBrowser starts the nodes):
//   1. open DASHBOARD_URL (basic auth with DASHBOARD_KEY) and wait until
//      its stream is live and both nodes are listed;
//   2. start the load (LOAD_CMD, a JSON argv) and, without reloading,
//      wait until the page shows LOAD_CONNS connections and deliveries/s
//      above 0; then read the top projects by usage (one project: one
//      row), once they count every connection or 3 s more have passed;
//   3. kill the second node (KILL_PID, SIGKILL) and wait until its row is
//      marked gone;
//   4. screenshot, and print the timings and the closes chart's reasons as
//      one JSON line on stdout.
// Each wait is bounded; a bound passed throws, which fails the Go test.
import { spawn } from "node:child_process";
import { launch, need, pageErrors, screenshot } from "./launch.mjs";

const url = need("DASHBOARD_URL");
const key = need("DASHBOARD_KEY");
const loadCmd = JSON.parse(need("LOAD_CMD"));
const loadConns = Number(need("LOAD_CONNS"));
const killPid = Number(need("KILL_PID"));
const number = (text) => (text == null || text === "n/a" ? NaN : Number(text.replaceAll(",", "")));

const browser = await launch();
let load;
const result = {};
try {
  const context = await browser.newContext({ httpCredentials: { username: "admin", password: key }, viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const errors = pageErrors(page);
  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#stream")?.textContent === "live", null, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelectorAll("#nodes tbody tr[data-state=up]").length === 2, null, { timeout: 10000 });
  result.connsBefore = number(await page.textContent("#conns"));
  const self = await page.textContent("#node");
  const other = await page.$$eval("#nodes tbody tr", (rows, self) => rows.map((r) => r.dataset.node).find((n) => n !== self), self);
  const navigations = [];
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });

  const loadStart = Date.now();
  load = spawn(loadCmd[0], loadCmd.slice(1), { stdio: ["ignore", "ignore", "inherit"] });
  await page.waitForFunction((want) => Number(document.querySelector("#conns").textContent.replaceAll(",", "")) >= want, loadConns, { timeout: 15000, polling: 100 });
  result.connsAfterSeconds = (Date.now() - loadStart) / 1000;
  await page.waitForFunction(() => Number(document.querySelector("#deliveries").textContent.replaceAll(",", "")) > 0, null, { timeout: 15000, polling: 100 });
  result.deliveriesAfterSeconds = (Date.now() - loadStart) / 1000;
  result.conns = number(await page.textContent("#conns"));
  result.deliveriesPerSecond = number(await page.textContent("#deliveries"));
  result.latency = await page.textContent("#latency");
  result.topProject = await page.textContent("#projects tbody tr td");
  // Usage is folded once a second: the top projects by each metric follow.
  await page.waitForFunction(() => document.querySelectorAll("#usage tbody tr td").length === 4 &&
    [...document.querySelectorAll("#usage tbody tr td")].every((td) => td.textContent !== ""), null, { timeout: 5000, polling: 100 });
  await page.waitForFunction((want) => document.querySelector("#usage tbody tr td").textContent.endsWith(want),
    loadConns.toLocaleString("en-US"), { timeout: 3000, polling: 100 }).catch(() => {});
  result.topUsage = await page.$$eval("#usage tbody tr:first-child td", (tds) => tds.map((td) => td.textContent));
  // The closes chart's legend: one series a reason the node counts.
  result.closeReasons = await page.$$eval("#chart-closes .u-legend .u-series .u-label", (els) => els.map((e) => e.textContent).slice(1));
  await screenshot(page, "dashboard-under-load");

  const killedAt = Date.now();
  process.kill(killPid, "SIGKILL");
  await page.waitForFunction((n) => document.querySelector(`#nodes tbody tr[data-node="${CSS.escape(n)}"]`)?.dataset.state === "gone", other, { timeout: 15000, polling: 100 });
  result.goneAfterSeconds = (Date.now() - killedAt) / 1000;
  result.clusterSummary = await page.textContent("#cluster-summary");
  await screenshot(page, "dashboard-node-gone");
  result.reloads = navigations.length;
  result.pageErrors = errors;
} finally {
  if (load && load.exitCode === null) load.kill("SIGKILL");
  await browser.close();
}
console.log(JSON.stringify(result));
