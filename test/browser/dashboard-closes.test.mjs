// The operator's view after a mixed run (cmd/switchboard
// TestDashboardClosesAndUsageMatchTheNode drives the traffic, then runs
// this): open DASHBOARD_URL, wait until the closes table counts
// WANT_CLOSES connections ended in all (the run's, so a sample taken after
// it), screenshot the closes chart, the tables and the page, and print
// as one JSON line what the page shows: the closes table's totals by
// reason, the usage table's exact figures (data-value) with the minute
// they start at, and any console or page error.
import { launch, need, pageErrors, screenshot } from "./launch.mjs";

const url = need("DASHBOARD_URL");
const wantCloses = Number(need("WANT_CLOSES"));

const browser = await launch();
const result = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = pageErrors(page);
  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#stream")?.textContent === "live", null, { timeout: 10000 });
  await page.waitForFunction((want) => [...document.querySelectorAll("#closes tbody tr")]
    .reduce((n, tr) => n + Number(tr.dataset.total), 0) === want, wantCloses, { timeout: 10000, polling: 100 });
  await page.waitForFunction(() => document.querySelector("#usage-since").dataset.since !== "", null, { timeout: 5000, polling: 100 });
  result.closes = await page.$$eval("#closes tbody tr", (rows) => Object.fromEntries(rows.map((tr) => [tr.dataset.reason, Number(tr.dataset.total)])));
  result.closesShown = await page.$$eval("#closes tbody tr", (rows) => rows.map((tr) => tr.textContent));
  result.chartReasons = await page.$$eval("#chart-closes .u-legend .u-series .u-label", (els) => els.map((e) => e.textContent).slice(1));
  result.usage = await page.$$eval("#usage tbody td[data-project]", (tds) => tds.map((td) => ({ col: td.cellIndex, project: td.dataset.project, value: Number(td.dataset.value) })));
  result.usageSince = Number(await page.getAttribute("#usage-since", "data-since"));
  await screenshot(page, "dashboard-after-mixed-run");
  const chart = await page.$("#chart-closes");
  const dir = process.env.ARTIFACTS;
  if (chart && dir) {
    await chart.screenshot({ path: `${dir}/closes-chart.png` });
    console.error(`screenshot: ${dir}/closes-chart.png`);
  }
  for (const id of ["closes", "usage"]) {
    const el = await page.$(`#${id}`);
    if (el && dir) {
      await el.screenshot({ path: `${dir}/${id}-table.png` });
      console.error(`screenshot: ${dir}/${id}-table.png`);
    }
  }
  result.pageErrors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
