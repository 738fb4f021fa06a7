// The operator console in a real browser: Debian's Chromium driven by
// playwright-core, one scenario per run (`node e2e.mjs NAME`), against a
// server the Rust test (tests/all/console.rs) started. The test passes
// what it needs in ARBITER_CONSOLE_TEST (JSON); the scenario asserts each
// step and prints its findings as JSON on its last line.
import assert from "node:assert/strict";

const cfg = JSON.parse(process.env.ARBITER_CONSOLE_TEST);
const { chromium } = await import(cfg.playwright);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  // As root in a sandboxed machine with no network beyond loopback.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const step = (what) => console.log(`step: ${what}`);

/** A new browser session signed in with `token`. */
async function signIn(token, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(cfg.admin + "/console/approvals");
  assert.match(page.url(), /\/console\/login$/, "a page without a session sends to sign-in");
  await page.getByLabel("Operator token").fill(token);
  await Promise.all([
    page.waitForURL(/\/console$/),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage: true });
}

/** A real decision, through the decision plane. */
async function decide(body) {
  const r = await fetch(cfg.decide + "/v1/decide", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, `decide answered ${r.status}`);
  return r.json();
}

function transfer(agent, amount, extra = {}) {
  return {
    action: { kind: "tool", name: "payments.transfer", params: { amount, to: "ACME Corp" } },
    context: { agent: { id: agent }, user: { id: "bob" }, environment: "prod", session: "s-42" },
    ...extra,
  };
}

/** A form post from inside the page, as a script on it could send one. */
async function postFrom(page, path, fields) {
  return page.evaluate(async ([path, fields]) => {
    const r = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields).toString(),
      redirect: "manual",
    });
    return { status: r.status, text: await r.text() };
  }, [path, fields]);
}

/** The session's CSRF token, from the sign-out form every page has. */
const csrfOf = (page) => page.locator('form.who input[name="csrf"]').inputValue();

/** The page does not scroll sideways. */
async function fitsWidth(page) {
  const [scroll, width] = await page.evaluate(() =>
    [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width + 1, `${page.url()} is ${scroll}px wide in a ${width}px window`);
}

const scenarios = {
  // Sign in, see a request appear live, approve it by keyboard with a
  // reason; the re-ask is allowed once.
  async approve() {
    const page = await signIn(cfg.tokens.alice);
    await shot(page, "overview");
    await page.goto(cfg.admin + "/console/approvals");
    await page.getByText("Nothing is waiting for an answer.").waitFor();
    await page.evaluate(() => { window.stillThisPage = true; });
    step("a real decision asks for approval");
    const asked = await decide(transfer("procurement-bot", 48000));
    assert.equal(asked.outcome, "require-approval");
    const id = asked.approval.id;
    const card = page.locator(`[data-approval="${id}"]`);
    await card.waitFor();
    assert.equal(await page.evaluate(() => window.stillThisPage), true, "it appeared without a reload");
    await card.getByText("payments.transfer").first().waitFor();
    await card.getByText("spend.needs-approval").first().waitFor();
    await card.getByRole("cell", { name: "procurement", exact: true }).waitFor();
    await shot(page, "approvals");
    step("approve with the keyboard");
    const reason = card.getByLabel("Reason");
    await reason.focus();
    await page.keyboard.type("PO 1182 checked with finance");
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement.textContent);
    assert.equal(focused.trim(), "Approve", "Tab reaches the Approve button");
    await Promise.all([page.waitForURL(/\/console\/approvals$/), page.keyboard.press("Enter")]);
    await page.getByText(`You approved approval ${id}.`).waitFor();
    await page.locator(`tr#approval-${id}`).getByText("alice").waitFor();
    step("the re-ask is allowed once");
    const again = await decide(transfer("procurement-bot", 48000, { approval_id: id }));
    assert.equal(again.outcome, "allow", JSON.stringify(again));
    const third = await decide(transfer("procurement-bot", 48000, { approval_id: id }));
    assert.equal(third.outcome, "deny");
    assert.equal(third.rule, "approval.used");
    step("a phone-width screen");
    const phone = await signIn(cfg.tokens.alice, { width: 390, height: 844 });
    for (const p of ["approvals", "agents", "policies", "decisions", ""]) {
      await phone.goto(cfg.admin + "/console/" + p);
      await fitsWidth(phone);
    }
    await phone.goto(cfg.admin + "/console/approvals");
    await shot(phone, "approvals-phone");
    return { approval: id, allowed: again.decision_id };
  },

  // Whoever the page shows buttons to, the server decides.
  async refusals() {
    const asked = await decide(transfer("procurement-bot", 9000));
    const id = asked.approval.id;
    const path = `/console/approvals/${id}/approve`;
    step("bob is the user the request is for");
    const bob = await signIn(cfg.tokens.bob);
    await bob.goto(cfg.admin + "/console/approvals");
    const card = bob.locator(`[data-approval="${id}"]`);
    await card.getByText("may not answer a request made for themselves").waitFor();
    assert.equal(await card.getByRole("button", { name: "Approve" }).count(), 0);
    const own = await postFrom(bob, path, { csrf: await csrfOf(bob), reason: "mine" });
    assert.equal(own.status, 403, own.text);
    step("an auditor sees no buttons, and a forged post is refused");
    const audrey = await signIn(cfg.tokens.audrey);
    await audrey.goto(cfg.admin + "/console/approvals");
    const seen = audrey.locator(`[data-approval="${id}"]`);
    await seen.getByText("Only an approver answers approvals.").waitFor();
    assert.equal(await audrey.getByRole("button", { name: /Approve|Decline/ }).count(), 0);
    await audrey.goto(cfg.admin + "/console/agents");
    assert.equal(await audrey.getByRole("button", { name: /Suspend|Resume/ }).count(), 0);
    await audrey.goto(cfg.admin + "/console/policies");
    assert.equal(await audrey.getByRole("button", { name: /Promote|Roll back|Review/ }).count(), 0);
    const forged = await postFrom(audrey, path, { csrf: await csrfOf(audrey), reason: "forged" });
    assert.equal(forged.status, 403, forged.text);
    assert.match(forged.text, /approver/);
    step("a post without the CSRF token is refused");
    const alice = await signIn(cfg.tokens.alice);
    const bare = await postFrom(alice, path, { reason: "no token" });
    assert.equal(bare.status, 403, bare.text);
    assert.match(bare.text, /CSRF/);
    const other = await postFrom(alice, path, { csrf: await csrfOf(audrey), reason: "another session's token" });
    assert.equal(other.status, 403, other.text);
    await alice.goto(cfg.admin + "/console/approvals");
    await alice.locator(`[data-approval="${id}"]`).waitFor();
    return { approval: id };
  },

  // The kill switch from the console binds the decision plane.
  async suspend() {
    await decide(transfer("rogue-bot", 10));
    const page = await signIn(cfg.tokens.alice);
    await page.goto(cfg.admin + "/console/agents");
    await page.getByLabel("Find an agent").fill("rogue");
    await page.getByRole("button", { name: "Search" }).click();
    const card = page.locator("article.agent", { hasText: "rogue-bot" });
    await card.getByLabel("Reason").fill("wiring money to unknown payees");
    await Promise.all([page.waitForURL(/agents\?q=/), card.getByRole("button", { name: "Suspend" }).click()]);
    await page.getByText("You suspended agent rogue-bot.").waitFor();
    await page.locator("article.agent", { hasText: "rogue-bot" })
      .getByText("suspended by alice").waitFor();
    await shot(page, "agents");
    const d = await decide(transfer("rogue-bot", 10));
    assert.equal(d.outcome, "deny");
    assert.equal(d.rule, "agent.suspended");
    const again = page.locator("article.agent", { hasText: "rogue-bot" });
    await again.getByLabel("Reason").fill("payees checked");
    await Promise.all([page.waitForURL(/agents\?q=/), again.getByRole("button", { name: "Resume" }).click()]);
    await page.getByText("You resumed agent rogue-bot.").waitFor();
    const after = await decide(transfer("rogue-bot", 10));
    assert.notEqual(after.rule, "agent.suspended");
    return { denied: d.decision_id };
  },

  // Mode to monitor and back, promote a shadow candidate whose confusion
  // matrix is shown, then roll back.
  async rollout() {
    const page = await signIn(cfg.tokens.alice);
    await page.goto(cfg.admin + "/console/policies");
    const policy = page.locator("#policy-procurement");
    step("the confusion matrix of the shadow candidate");
    const matrix = policy.locator("table.confusion");
    await matrix.waitFor();
    const cells = await matrix.locator("td").allTextContents();
    assert.ok(cells.some((c) => Number(c) > 0), `the matrix counts decisions: ${cells}`);
    await policy.getByText("Diverging decisions").waitFor();
    await shot(page, "policies");
    step("to monitor, confirmed");
    await policy.getByLabel("Switch mode to").selectOption("monitor");
    await Promise.all([page.waitForURL(/mode\?to=monitor/), policy.getByRole("button", { name: "Review the change" }).click()]);
    await page.getByText("The policy stops running.").waitFor();
    await Promise.all([page.waitForURL(/\/console\/policies$/), page.getByRole("button", { name: "Switch procurement to monitor" }).click()]);
    await page.getByText("procurement is now in monitor mode (was enforce).").waitFor();
    const monitored = await decide(transfer("bot", 5500));
    assert.equal(monitored.outcome, "allow", "monitor mode allows");
    step("and back to enforce");
    await page.locator("#policy-procurement").getByLabel("Switch mode to").selectOption("enforce");
    await Promise.all([page.waitForURL(/mode\?to=enforce/), page.getByRole("button", { name: "Review the change" }).click()]);
    await Promise.all([page.waitForURL(/\/console\/policies$/), page.getByRole("button", { name: "Switch procurement to enforce" }).click()]);
    await page.getByText("procurement is now in enforce mode (was monitor).").waitFor();
    assert.equal((await decide(transfer("bot", 5500))).outcome, "require-approval");
    step("promote the candidate");
    await Promise.all([page.waitForURL(/\/console\/policies$/), page.getByRole("button", { name: "Promote lenient to serve" }).click()]);
    await page.getByText(/Candidate lenient of procurement now serves/).waitFor();
    assert.equal((await decide(transfer("bot", 5500))).outcome, "allow", "the promoted version serves");
    step("roll back");
    await Promise.all([page.waitForURL(/\/console\/policies$/), page.getByRole("button", { name: /Roll procurement back to/ }).first().click()]);
    await page.getByText(/procurement serves .* again/).waitFor();
    assert.equal((await decide(transfer("bot", 5500))).outcome, "require-approval", "the earlier version serves again");
    return {};
  },

  // A tampered log: the verification says where it broke.
  async tampered() {
    const page = await signIn(cfg.tokens.alice);
    await page.goto(cfg.admin + "/console/decisions");
    await page.getByText("Not verified since this server started.").waitFor();
    await Promise.all([page.waitForURL(/\/console\/decisions/), page.getByRole("button", { name: "Verify the log now" }).click()]);
    await page.getByText("The log does not verify").waitFor();
    const seq = await page.locator(".broken-seq").textContent();
    assert.equal(Number(seq), cfg.broken_seq, "the first record not as written");
    await shot(page, "decisions-broken");
    step("search and a record's full view");
    await page.getByLabel("Agent").fill("procurement-bot");
    await page.getByLabel("Outcome").selectOption("require-approval");
    await Promise.all([page.waitForURL(/outcome=require-approval/), page.getByRole("button", { name: "Search" }).click()]);
    const rows = await page.locator("table.decisions tbody tr").count();
    assert.equal(rows, cfg.approvals_asked, "the search keeps only what matches");
    await Promise.all([page.waitForURL(/\/console\/decisions\/[0-9a-f-]+$/), page.locator("table.decisions tbody a").first().click()]);
    await page.getByText('"spend.needs-approval"').first().waitFor();
    return { broken_seq: Number(seq), rows };
  },
};

const run = scenarios[process.argv[2]];
if (!run) {
  console.error(`no scenario ${process.argv[2]}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  const found = await run();
  console.log(JSON.stringify(found));
} finally {
  await browser.close();
}
