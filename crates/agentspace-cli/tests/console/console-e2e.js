// The console end to end in headless Chromium, driven by playwright-core: two people
// sign in (alice, who starts the credit officer, and bob, who approves), the agent's
// decisions stream in, its outside mail is held, bob approves it, the held request
// completes, and the approval is found in audit search. A screenshot of each step goes
// to $ARTIFACTS/NN-step.png.
//
// Run by crates/agentspace-cli/tests/suite/console.rs, which starts `agentspace serve`
// on a fresh state directory and passes:
//   CONSOLE_URL  the control plane, e.g. http://127.0.0.1:40123
//   ALICE_TOKEN  an admin's API token (she starts the task; it acts for her)
//   BOB_TOKEN    an approver's API token (four-eyes: alice may not approve her own)
//   ARTIFACTS    where the screenshots go
//   CHROMIUM     the browser (default /usr/bin/chromium)
// It prints one JSON line per finding for the Rust side to check, and exits non-zero on
// the first failed expectation.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const url = process.env.CONSOLE_URL;
const artifacts = process.env.ARTIFACTS;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
// This machine has no network: nothing may try to reach one.
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// Every wait is bounded; the tool servers start in cells of their own first.
const WAIT = 90000;

// What the agent may not do to the console: a tool name it chooses is audit data.
const HOSTILE = '<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>';

let step = 0;
const shots = [];

function report(what, fields) {
  console.log(JSON.stringify(Object.assign({ finding: what }, fields)));
}

function expect(ok, message) {
  if (!ok) throw new Error('expectation failed: ' + message);
}

async function shot(page, name) {
  step += 1;
  const file = path.join(artifacts, String(step).padStart(2, '0') + '-' + name + '.png');
  await page.screenshot({ path: file, fullPage: true });
  shots.push(file);
}

async function person(name) {
  // A fresh profile per person: separate cookie jars, nothing from earlier runs.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'agentspace-console-' + name + '-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: FLAGS,
    viewport: { width: 1440, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('dialog', (d) => { errors.push('a dialog opened: ' + d.message()); d.dismiss(); });
  return { name, context, page, profile, errors };
}

async function signIn(who, token, screenshot) {
  const { page } = who;
  await page.goto(url + '/console/login');
  if (screenshot) await shot(page, screenshot);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL(url + '/console/'), page.click('button[type=submit]')]);
  await page.waitForSelector('text=Signed in as');
}

// The stream row of `kind` for `task`, added by the script (class `new`), not by the
// server's first rendering of the page.
function liveRow(task, kind) {
  return '#stream tbody tr.new:has(td:nth-child(3):text-is("' + kind + '")):has(a:text-is("' + task + '"))';
}

async function pickCreditOfficer(page) {
  const option = 'select[name=agent] option[value^="credit-officer@"]';
  const value = await page.$eval(option, (o) => o.value);
  await page.selectOption('select[name=agent]', value);
}

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const alice = await person('alice');
  const bob = await person('bob');
  try {
    // 1-2. Alice signs in and sees the console: who she is, the start form, budgets.
    await signIn(alice, process.env.ALICE_TOKEN, 'login');
    await alice.page.waitForSelector('select[name=agent] option[value^="credit-officer@"]', { state: 'attached' });
    await shot(alice.page, 'console');

    // 3. Bob, an approver, has the console open before anything is asked of him.
    await signIn(bob, process.env.BOB_TOKEN);
    await bob.page.waitForSelector('#no-approvals:visible');
    await bob.page.waitForSelector('#live:text-is("connected")');
    await shot(bob.page, 'approver-waiting');

    // 4-5. Alice starts the credit officer from its host-registered definition. After
    // its scenario the agent stays up, so its cell stays on the canvas.
    await pickCreditOfficer(alice.page);
    await alice.page.fill('input[name=command]', "sh -c 'python3 /workspace/agent.py; exec sleep 110'");
    await shot(alice.page, 'start-form');
    await Promise.all([
      alice.page.waitForURL(/\/console\/tasks\/[0-9a-z]{26}$/),
      alice.page.click('form.start button'),
    ]);
    const task = alice.page.url().split('/').pop();
    report('started', { task });
    await alice.page.waitForSelector('#live:text-is("connected")');
    await shot(alice.page, 'task-started');

    // 6. Bob watches the decisions stream in and the approval appear, without a reload.
    await bob.page.waitForSelector(liveRow(task, 'task_start'));
    const held = await bob.page.waitForSelector('#approvals tbody tr.new:has(a:text-is("' + task + '"))');
    const approval = await held.getAttribute('data-id');
    const heldText = await held.innerText();
    expect(heldText.includes('mcp://mail/send_mail'), 'the held action is the mail: ' + heldText);
    expect(heldText.includes('eve@external.example'), 'the approver sees the address: ' + heldText);
    await bob.page.waitForSelector(liveRow(task, 'approval_requested'));
    expect(await bob.page.isHidden('#no-approvals'), '"Nothing is waiting" is gone');
    // The canvas: the task with its identity and its boundary.
    const card = '#canvas article.cell[data-task="' + task + '"]';
    await bob.page.waitForSelector(card + ' h3 a:text-is("credit-officer:' + task + '")');
    const boundary = await bob.page.innerText(card);
    for (const allowed of ['customer-db', 'scoring', 'templates']) {
      expect(await bob.page.isVisible(card + ' .allowed li:has(b:text-is("' + allowed + '"))'), allowed + ' is allowed');
    }
    for (const blocked of ['hr', 'medical']) {
      expect(await bob.page.isVisible(card + ' .blocked li:has(b:text-is("' + blocked + '"))'), blocked + ' is blocked');
    }
    expect(boundary.includes('for alice'), 'the card names the user: ' + boundary);
    report('held', { approval, card: boundary });
    await shot(bob.page, 'approval-appeared');

    // Alice may not approve her own request (four-eyes): her console offers it, the
    // server refuses it.
    await alice.page.goto(url + '/console/');
    const own = alice.page.locator('#approvals tr[data-id="' + approval + '"]');
    await own.locator('input[name=comment]').first().fill('my own');
    await Promise.all([
      alice.page.waitForURL(url + '/console/approvals/' + approval + '/approve'),
      own.locator('button:text-is("Approve")').click(),
    ]);
    const refusal = await alice.page.innerText('body');
    expect(refusal.includes('four-eyes'), 'self-approval is refused: ' + refusal);
    report('self_approval_refused', { text: refusal.slice(0, 300) });
    await shot(alice.page, 'self-approval-refused');

    // 7. Bob approves with a comment (a CSRF-protected form).
    const row = bob.page.locator('#approvals tr[data-id="' + approval + '"]');
    await row.locator('input[name=comment]').first().fill('one-off: the customer asked for it');
    await Promise.all([bob.page.waitForURL(url + '/console/'), row.locator('button:text-is("Approve")').click()]);
    await bob.page.waitForSelector('#approvals tr[data-id="' + approval + '"]', { state: 'detached' });
    await bob.page.waitForSelector('#stream tbody tr:has(td:nth-child(3):text-is("approval_granted")):has(a:text-is("' + task + '"))');
    await shot(bob.page, 'approved');

    // 8. The held request completes: the call is allowed and the agent reports the mail
    // sent; the rest of its scenario runs into the boundary.
    await alice.page.goto(url + '/console/tasks/' + task);
    await alice.page.waitForSelector('#stream tbody tr:has(td:nth-child(3):text-is("mcp_call")):has(td:nth-child(8):text-is("mcp://mail/send_mail")):has(td:nth-child(9):text-is("allow"))');
    await alice.page.waitForFunction(() => document.getElementById('log').textContent.includes('"step": "letter"'));
    const log = await alice.page.textContent('#log');
    const mail = log.split('\n').find((l) => l.includes('"step": "mail-external"'));
    expect(mail && mail.includes('sent to eve@external.example'), 'the held mail went out: ' + mail);
    report('completed', { mail });
    // Its card now shows what it was denied and the taint its session carries.
    await alice.page.waitForSelector(card + ' .taint .label:text-is("pii")');
    await alice.page.waitForSelector(card + ' .blocked li:has(b:text-is("mcp://mail/send_mail")):has-text("denied: flow")');
    await shot(alice.page, 'request-completed');
    await alice.page.goto(url + '/console/');
    await alice.page.waitForSelector(card + ' .blocked li:has-text("denied: flow")');
    await shot(alice.page, 'canvas');

    // 9. Audit search finds the approval: who approved, for which task.
    await alice.page.goto(url + '/console/audit?kind=approval_granted&task=' + task);
    const granted = await alice.page.innerText('table');
    expect(granted.includes('approval_granted') && granted.includes('bob'), 'audit search shows the approval: ' + granted);
    expect(await alice.page.isVisible('text=The chain verifies'), 'the chain verifies');
    report('audit', { rows: granted });
    await shot(alice.page, 'audit-search');

    // 10. What an agent chooses reaches the page as text. A second task calls a tool
    // whose name is markup; bob's open console shows the name and runs nothing.
    await alice.page.goto(url + '/console/');
    await pickCreditOfficer(alice.page);
    const probe = [
      'import json,urllib.request as u',
      'U="http://127.0.0.1:3130/mcp"',
      'H={"content-type":"application/json","accept":"application/json, text/event-stream"}',
      'P=lambda b,h=H:u.urlopen(u.Request(U,json.dumps(b).encode(),h))',
      'r=P({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"probe","version":"1"}}})',
      'S=dict(H,**{"mcp-session-id":r.headers["mcp-session-id"]})',
      'P({"jsonrpc":"2.0","method":"notifications/initialized"},S)',
      'print(P({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":' + JSON.stringify(HOSTILE) + ',"arguments":{}}},S).read().decode())',
    ].join(';');
    await alice.page.fill('input[name=command]', "sh -c '" + 'python3 -c \'"\'"\'' + probe + '\'"\'"\'; exec sleep 110' + "'");
    await Promise.all([alice.page.waitForURL(/\/console\/tasks\/[0-9a-z]{26}$/), alice.page.click('form.start button')]);
    const probeTask = alice.page.url().split('/').pop();
    const hostileRow = bob.page.locator(liveRow(probeTask, 'mcp_call')).filter({ hasText: 'onerror' });
    await hostileRow.first().waitFor();
    const shown = await hostileRow.first().locator('td:nth-child(8)').textContent();
    expect(shown === 'mcp://?/' + HOSTILE, 'the tool name shows as text: ' + shown);
    await bob.page.waitForSelector('#canvas article.cell[data-task="' + probeTask + '"] .blocked li:has-text("onerror")');
    const damage = await bob.page.evaluate(() => ({
      pwned: window.__pwned === undefined ? null : window.__pwned,
      images: document.querySelectorAll('#stream img, #canvas img').length,
      scripts: Array.from(document.scripts).map((s) => s.src),
    }));
    expect(damage.pwned === null && damage.images === 0, 'no markup from audit data ran: ' + JSON.stringify(damage));
    expect(damage.scripts.length === 1 && damage.scripts[0].endsWith('/console/console.js'), 'only the console script: ' + JSON.stringify(damage.scripts));
    // The browser itself refuses to parse a string as HTML on these pages.
    const sink = await bob.page.evaluate(() => {
      try { document.body.insertAdjacentHTML('beforeend', '<i id="injected">x</i>'); return 'parsed'; } catch (e) { return e.name; }
    });
    expect(sink === 'TypeError', 'Trusted Types refuse HTML strings: ' + sink);
    report('hostile_text', { shown, damage, sink });
    await shot(bob.page, 'hostile-name-as-text');

    // 11. Both tasks are stopped from their pages.
    for (const t of [probeTask, task]) {
      await alice.page.goto(url + '/console/tasks/' + t);
      await Promise.all([alice.page.waitForURL(url + '/console/tasks/' + t), alice.page.click('form.stop button')]);
      await alice.page.waitForSelector('#canvas .who:has-text("exited")');
    }
    await shot(alice.page, 'stopped');
    report('stopped', { tasks: [task, probeTask] });

    for (const who of [alice, bob]) {
      expect(who.errors.length === 0, who.name + "'s page had errors: " + who.errors.join('; '));
    }
  } catch (e) {
    // What each page showed when it failed, for the test's artifacts.
    for (const who of [alice, bob]) {
      const file = path.join(artifacts, 'failed-' + who.name + '.png');
      await who.page.screenshot({ path: file, fullPage: true }).catch(() => {});
      console.error(who.name + ' was at ' + who.page.url() + '; see ' + file);
    }
    throw e;
  } finally {
    report('screenshots', { files: shots });
    for (const who of [alice, bob]) {
      await who.context.close().catch(() => {});
      fs.rmSync(who.profile, { recursive: true, force: true });
    }
  }
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
