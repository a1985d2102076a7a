// The admin page in a real browser (Debian's headless Chromium, driven over the DevTools protocol by
// puppeteer-core): log in, watch the connection count change when the test connects a client, find that
// user and disconnect them, and save a screenshot of the dashboard.
//
// Talks with the Rust test over lines: prints `STEP logged-in` and waits for `go` (the test has connected
// a client signed in as user 77), prints `PASS` at the end.
//
// Environment: HERALD_URL (http://host:port), ADMIN_PASSWORD, SCREENSHOT (a .png path), CHROMIUM (default
// /usr/bin/chromium).
"use strict";

const puppeteer = require("puppeteer-core");
const readline = require("node:readline");

const url = process.env.HERALD_URL;
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

async function text(page, selector) {
  return page.$eval(selector, (element) => element.textContent);
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const failures = [];
    page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
    // Script errors fail the test; failed requests are the page's to show (the wrong password's 401 is one).
    page.on("console", (message) => {
      if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
        failures.push(`console: ${message.text()}`);
      }
    });

    await page.goto(`${url}/admin`, { waitUntil: "load" });
    await page.waitForSelector("#login-form", { visible: true });
    await page.type("#password", "wrong password");
    await page.click("#login-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("wrong"));
    await page.$eval("#password", (input) => { input.value = ""; });
    await page.type("#password", process.env.ADMIN_PASSWORD);
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#dashboard", { visible: true });
    await page.waitForFunction(() => document.getElementById("clients").textContent === "0");

    console.log("STEP logged-in");
    await nextLine();

    // The live count follows the client the test connected.
    await page.waitForFunction(() => document.getElementById("clients").textContent === "1", { timeout: 15000 });
    await page.waitForFunction(
      () => [...document.querySelectorAll("#channels tbody td")].some((td) => td.textContent === "news"),
      { timeout: 15000 },
    );

    // Test messages through the page, until the delivery rate shows them (the charts then have lines).
    await page.type("#publish-channel", "news");
    for (let i = 0; i < 3; i++) {
      await page.click("#publish-form button[type=submit]");
      await page.waitForFunction(() => document.getElementById("publish-result").textContent.startsWith("published"));
      await page.$eval("#publish-result", (p) => { p.textContent = ""; });
    }
    await page.waitForFunction(() => !["–", "0"].includes(document.getElementById("delivery-rate").textContent), { timeout: 15000 });
    await page.click("#channels tbody tr");
    await page.waitForFunction(() => document.getElementById("channel-history").textContent.includes("hello"));

    await page.type("#user", "77");
    await page.click("#user-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("user-result").textContent.startsWith("1 connection"));
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

    await page.click("#disconnect-user");
    await page.waitForFunction(() => document.getElementById("user-result").textContent.includes("disconnected"));
    await page.waitForFunction(() => document.getElementById("clients").textContent === "0", { timeout: 15000 });

    if (failures.length) throw new Error(failures.join("\n"));
    console.log("PASS");
  } finally {
    await browser.close();
    lines.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
