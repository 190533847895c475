// The web pages in a real headless Chromium, driven by playwright-core (no browser download:
// Debian's chromium). Started by tests/e2e/browser.rs against a `flow standalone` with the DAGs
// `demo` and `xss`; reads FLOW_URL, FLOW_TOKEN, FLOW_SCREENSHOTS, CHROMIUM from the environment.
// Prints one JSON line, {"ok": true, ...} or {"ok": false, "error": ...}, and exits 0 or 1.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.FLOW_URL;
const token = process.env.FLOW_TOKEN;
const shots = process.env.FLOW_SCREENSHOTS;
const executablePath = process.env.CHROMIUM;
const checks = [];
const screenshots = [];

function check(cond, what) {
  if (!cond) {
    throw new Error(`check failed: ${what}`);
  }
  checks.push(what);
}

async function shot(page, name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  screenshots.push(path);
}

// Reloads until `probe` holds; the pages refresh themselves too, but a reload is deterministic.
async function until(page, probe, what, seconds = 60) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    if (await probe()) {
      return;
    }
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what} at ${page.url()}`);
    }
    await page.waitForTimeout(500);
    await page.reload();
  }
}

async function noScriptRan(page, where) {
  const xss = await page.evaluate(() => window.__xss);
  check(xss === undefined, `no injected script ran on the ${where}`);
}

const runIdOf = (url) => new URL(url).searchParams.get("run");

async function main() {
  mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const errors = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
    page.on("dialog", (d) => { errors.push(`dialog opened: ${d.message()}`); d.dismiss(); });
    page.on("console", (m) => {
      // A CSP violation is reported on the console: our own markup must cause none.
      if (m.type() === "error" && /Content Security Policy/i.test(m.text())) {
        errors.push(`CSP violation: ${m.text()}`);
      }
    });

    // Log in through the form.
    await page.goto(`${base}/`);
    check(new URL(page.url()).pathname === "/login", "an anonymous visit lands on /login");
    await shot(page, "01-login");
    await page.fill("#token", token);
    await Promise.all([page.waitForURL(`${base}/`), page.click("#login-form button[type=submit]")]);
    check(new URL(page.url()).pathname === "/", "the login form leads back to the DAG list");

    // The DAG list.
    check(await page.locator("tr[data-dag=demo]").count() === 1, "the list shows the DAG demo");
    check(await page.locator("#import-errors .import-message").count() >= 1,
      "the list shows the broken DAG file as a banner");
    const banner = await page.locator("#import-errors").innerText();
    check(/broken\.yaml:\d+:\d+/.test(banner), "the banner gives file:line:col");
    await noScriptRan(page, "DAG list");
    await shot(page, "02-dag-list");

    // Trigger demo with a non-default param through the form.
    await page.click("tr[data-dag=demo] a.dag-link");
    await page.click("#trigger summary");
    await page.fill("#p_n", "7");
    await page.fill("#p_name", "browser");
    await Promise.all([page.waitForURL(/\/dags\/demo\?run=/), page.click("#trigger-submit")]);
    const runId = runIdOf(page.url());
    check(runId && runId.startsWith("demo__"), "the trigger form leads to the new run");
    await until(page, async () => (await page.locator("#grid a.head.selected.s-success").count()) === 1,
      "the run to succeed in the grid");
    check(await page.locator("#grid a.cell.s-success").count() >= 4, "every task is green in the grid");
    check(await page.locator("#graph rect.node.s-success").count() === 4, "the graph is coloured by the run");
    await shot(page, "03-dag-page");

    // A bad param value: the field shows the server's error.
    await page.click("#trigger summary");
    // The browser's own number check would stop "seven"; the server must catch it regardless.
    await page.locator("#p_n").evaluate((el) => { el.type = "text"; });
    await page.fill("#p_n", "seven");
    await page.click("#trigger-submit");
    await page.waitForSelector("#error-p_n");
    check((await page.locator("#error-p_n").innerText()).includes("integer"),
      "a bad param value is shown by its field");
    await shot(page, "04-trigger-error");

    // The run page, then the task log.
    await page.goto(`${base}/runs/${encodeURIComponent(runId)}`);
    check((await page.locator("#run-state").innerText()).trim() === "success", "the run page says success");
    check(await page.locator("#gantt rect.bar").count() >= 4, "the Gantt chart has a bar per try");
    check((await page.locator("#params").innerText()).includes('"n": 7'), "the run kept the param given");
    await shot(page, "05-run-page");
    await page.click("tr[data-task=a] a.task-link");
    await page.waitForSelector("#log");
    const log = await page.locator("#log").innerText();
    check(log.includes("hello browser 7"), "the task page holds the try's log line");
    check((await page.locator("#command").innerText()).includes("echo hello 'browser' 7"),
      "the task page shows the rendered command, the string param quoted");
    await shot(page, "06-task-log");

    // Clear task a and see it run again: a second try.
    await page.goto(`${base}/runs/${encodeURIComponent(runId)}`);
    await Promise.all([page.waitForLoadState("load"), page.click("tr[data-task=a] .clear-button")]);
    await until(page, async () => {
      const tries = await page.locator("tr[data-task=a] a.try-link").count();
      const state = (await page.locator("#run-state").innerText()).trim();
      return tries === 2 && state === "success";
    }, "task a to run a second try");
    await shot(page, "07-run-after-clear");
    await page.click("tr[data-task=a] a.task-link");
    await page.waitForSelector("#try-selector");
    check(await page.locator("#try-selector a").count() === 2, "the try selector offers both tries");
    check((await page.locator("#log").innerText()).includes("try 2"), "the latest try's log is shown");
    await shot(page, "08-task-second-try");

    // The live tail: the second line of a running try appears without a reload.
    await page.goto(`${base}/dags/slow`);
    await page.click("#trigger summary");
    await Promise.all([page.waitForURL(/\/dags\/slow\?run=/), page.click("#trigger-submit")]);
    const slowRun = runIdOf(page.url());
    await page.goto(`${base}/runs/${encodeURIComponent(slowRun)}/tasks/sleepy`);
    await until(page, async () => (await page.locator("#log").innerText()).includes("first line"),
      "the slow try to start", 30);
    check(!(await page.locator("#log").innerText()).includes("second line"),
      "the page opened while the try runs");
    await page.evaluate(() => { window.__same_page = true; });
    await page.waitForFunction(
      () => document.getElementById("log").textContent.includes("second line") && window.__same_page === true,
      null, { timeout: 15000 });
    check(true, "the log tail appended a line written after the page loaded");
    await shot(page, "09-live-tail");

    // The XSS DAG on every page.
    await page.goto(`${base}/`);
    check((await page.locator("tr[data-dag=xss] .desc").innerText()).includes("<script>"),
      "the hostile description is shown as text");
    await noScriptRan(page, "DAG list with the xss DAG");
    await page.goto(`${base}/dags/xss`);
    await noScriptRan(page, "xss DAG page");
    await page.click("#trigger summary");
    await Promise.all([page.waitForURL(/\/dags\/xss\?run=/), page.click("#trigger-submit")]);
    const xssRun = runIdOf(page.url());
    await until(page, async () => (await page.locator("#grid a.head.selected.s-success").count()) === 1,
      "the xss run to succeed");
    await noScriptRan(page, "xss DAG page with a run");
    await shot(page, "10-xss-dag");
    await page.goto(`${base}/runs/${encodeURIComponent(xssRun)}`);
    await noScriptRan(page, "xss run page");
    await shot(page, "11-xss-run");
    await page.goto(`${base}/runs/${encodeURIComponent(xssRun)}/tasks/t`);
    const xssLog = await page.locator("#log").innerText();
    check(xssLog.includes("<script>window.__xss=1</script>") && xssLog.includes("<img src=x onerror"),
      "the hostile log lines are shown as text");
    await page.waitForTimeout(500);
    await noScriptRan(page, "xss task page");
    await shot(page, "12-xss-task");
    check(await page.locator("img").count() === 0, "no <img> element was injected anywhere on the task page");

    // Every payload of tests/browser/xss-payloads.txt, in a description, tags, a param, log lines
    // and outputs: no page may run any of them (an alert() would open a dialog, caught above).
    await page.goto(`${base}/`);
    await noScriptRan(page, "DAG list with the payload list");
    await page.goto(`${base}/dags/xss_list`);
    await page.click("#trigger summary");
    await Promise.all([page.waitForURL(/\/dags\/xss_list\?run=/), page.click("#trigger-submit")]);
    const listRun = runIdOf(page.url());
    await until(page, async () => (await page.locator("#grid a.head.selected.s-success").count()) === 1,
      "the payload-list run to succeed");
    await noScriptRan(page, "payload-list DAG page");
    await page.goto(`${base}/runs/${encodeURIComponent(listRun)}`);
    await noScriptRan(page, "payload-list run page");
    const payloads = Number(process.env.FLOW_XSS_PAYLOADS);
    check(payloads >= 20, "the payload list is there");
    for (let i = 0; i < payloads; i++) {
      await page.goto(`${base}/runs/${encodeURIComponent(listRun)}/tasks/each?map_index=${i}`);
      await page.waitForSelector("#log");
      await page.waitForTimeout(100);
      await noScriptRan(page, `task page of payload ${i}`);
    }
    const injected = await page.evaluate(() => [...document.querySelectorAll("*")].filter((el) =>
      ["IMG", "IFRAME", "OBJECT", "MATH", "META"].includes(el.tagName) && el.closest("head") === null
      || [...el.attributes].some((a) => a.name.startsWith("on") || /^\s*javascript:/i.test(a.value))
    ).map((el) => el.outerHTML.slice(0, 80)));
    check(injected.length === 0, `no element of a payload was injected on the last task page (${injected})`);
    await shot(page, "13-xss-list");

    check(errors.length === 0, `no page errors, dialogs or CSP violations (${errors.join("; ")})`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => { console.log(JSON.stringify({ ok: true, checks, screenshots })); },
  (e) => {
    console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), checks, screenshots }));
    process.exitCode = 1;
  },
);
