// internal/browsertest's own check: open the page at argv[2] and print
// what its script wrote into #out, so a browser that runs no scripts (or
// none at all) fails the test.
import { launch } from "./launch.mjs";

const browser = await launch();
try {
  const page = await browser.newPage();
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => document.querySelector("#out")?.textContent !== "", null, { timeout: 10000 });
  console.log(await page.textContent("#out"));
} finally {
  await browser.close();
}
