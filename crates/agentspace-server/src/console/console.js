// Agent Space console: live updates for the pages the server renders.
//
// Audit data is chosen in part by agents (URLs, tool names, arguments), so this script
// never parses a string as HTML: every value goes into the page through textContent and
// DOM calls. The page's Content-Security-Policy enforces it (Trusted Types with no
// policy: handing the DOM a string to parse as HTML throws).
'use strict';

(function () {
  const csrf = document.body.dataset.csrf || '';
  const canvas = document.getElementById('canvas');
  const approvals = document.getElementById('approvals');
  const stream = document.getElementById('stream');
  const log = document.getElementById('log');
  const live = document.getElementById('live');
  const task = canvas ? canvas.dataset.task || '' : '';
  const MAX_ROWS = 200;

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (className) e.className = className;
    return e;
  }

  function taskLink(id) {
    if (!id) return el('span', '-');
    const a = el('a', id);
    a.href = '/console/tasks/' + encodeURIComponent(id);
    return a;
  }

  // ---------------------------------------------------------------- decision stream

  const seen = new Set();
  const DECISION_CLASS = { allow: 'd-allow', deny: 'd-deny', approval_required: 'd-approval' };

  function addEvent(data) {
    const e = (data && data.event) || {};
    if (typeof e.seq !== 'number' || seen.has(e.seq)) return;
    seen.add(e.seq);
    const body = stream.tBodies[0];
    const tr = el('tr', null, (DECISION_CLASS[e.decision] || 'd-none') + ' new');
    tr.dataset.seq = String(e.seq);
    const time = typeof e.time === 'string' ? e.time.slice(11, 23) : '';
    const cells = [e.seq, time, e.kind, e.user, e.agent, null, e.action, e.resource, e.decision, e.reason];
    cells.forEach(function (value, i) {
      const td = el('td');
      if (i === 5) td.appendChild(taskLink(e.task));
      else td.textContent = value === undefined || value === null ? '-' : String(value);
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  if (stream) {
    for (const row of stream.tBodies[0].rows) seen.add(Number(row.dataset.seq));
    // The browser reconnects by itself, resuming after the last event. The server may
    // refuse a resume from too far back (an approver may not replay the log's history);
    // then the stream follows from now on, and the gap is in audit search.
    const open = function (after) {
      const query = new URLSearchParams();
      if (after) query.set('after', after);
      if (stream.dataset.task) query.set('task', stream.dataset.task);
      const source = new EventSource('/console/events?' + query.toString());
      let opened = false;
      source.onopen = function () {
        opened = true;
        if (live) live.textContent = 'connected';
      };
      source.onerror = function () {
        if (source.readyState !== EventSource.CLOSED) {
          if (live) live.textContent = 'reconnecting…';
          return;
        }
        source.close();
        if (opened || after) {
          if (live) live.textContent = 'reconnecting from now (earlier decisions: audit search)';
          setTimeout(function () { open(null); }, 3000);
        } else if (live) {
          live.textContent = 'disconnected: reload the page (signed out?)';
        }
      };
      source.onmessage = function (message) {
        let data;
        try { data = JSON.parse(message.data); } catch (_) { return; }
        addEvent(data);
        refreshSoon();
      };
    };
    open(stream.dataset.after);
  }

  // ---------------------------------------------------------------- canvas

  function reachList(items) {
    if (!items || items.length === 0) return el('p', 'nothing', 'none');
    const ul = el('ul');
    for (const r of items) {
      const li = el('li');
      li.appendChild(el('b', r.name));
      li.appendChild(document.createTextNode(' '));
      li.appendChild(el('span', r.kind, 'kind'));
      li.appendChild(document.createTextNode(' ' + r.detail));
      ul.appendChild(li);
    }
    return ul;
  }

  function cellCard(c) {
    const article = el('article', null, 'cell');
    article.dataset.task = c.task;
    const h3 = el('h3');
    const a = el('a', c.agent + ':' + c.task);
    a.href = '/console/tasks/' + encodeURIComponent(c.task);
    h3.appendChild(a);
    article.appendChild(h3);
    let state = c.state;
    if (c.state === 'running') state = 'running since ' + c.started_at;
    else if (c.exit_code !== null && c.exit_code !== undefined) state = c.state + ' (' + c.exit_code + ')';
    const who = el('p', null, 'who');
    who.appendChild(document.createTextNode('for '));
    who.appendChild(el('b', c.user));
    who.appendChild(document.createTextNode(' · ' + state + ' · ' + c.definition));
    article.appendChild(who);
    const boundary = el('div', null, 'boundary');
    const allowed = el('div', null, 'allowed');
    allowed.appendChild(el('h4', 'May reach'));
    allowed.appendChild(reachList(c.allowed));
    const blocked = el('div', null, 'blocked');
    blocked.appendChild(el('h4', 'Blocked'));
    blocked.appendChild(reachList(c.blocked));
    boundary.appendChild(allowed);
    boundary.appendChild(blocked);
    article.appendChild(boundary);
    if (c.audited) {
      const taint = el('p', 'Taint: ', 'taint');
      if (c.taint.length === 0) taint.appendChild(document.createTextNode('none'));
      c.taint.forEach(function (label, i) {
        if (i > 0) taint.appendChild(document.createTextNode(' '));
        taint.appendChild(el('span', label, 'label'));
      });
      article.appendChild(taint);
    }
    article.appendChild(el('p', 'Budget used: ' + c.budget.join(' · '), 'budget'));
    if (c.servers.length > 0) {
      const servers = el('p', 'Tool servers, each in a cell of its own: ', 'servers');
      c.servers.forEach(function (s, i) {
        const at = s.indexOf(':');
        if (i > 0) servers.appendChild(document.createTextNode(', '));
        const a = el('a', s.slice(0, at));
        a.href = '/console/tasks/' + encodeURIComponent(s.slice(at + 1));
        servers.appendChild(a);
      });
      article.appendChild(servers);
    }
    return article;
  }

  function renderCells(cells) {
    canvas.replaceChildren.apply(canvas, cells.map(cellCard));
    const none = document.getElementById('no-cells');
    if (none) none.hidden = cells.length > 0;
  }

  // ---------------------------------------------------------------- approvals

  function decisionForm(id, verb, label) {
    const form = el('form', null, 'inline');
    form.method = 'post';
    form.action = '/console/approvals/' + encodeURIComponent(id) + '/' + verb;
    const token = el('input');
    token.type = 'hidden';
    token.name = 'csrf';
    token.value = csrf;
    const comment = el('input');
    comment.name = 'comment';
    comment.placeholder = 'comment';
    comment.size = 14;
    form.appendChild(token);
    form.appendChild(comment);
    form.appendChild(el('button', label));
    return form;
  }

  function approvalRow(p) {
    const tr = el('tr', null, 'new');
    tr.dataset.id = p.id;
    const values = [p.user, p.agent, null, p.action, p.resource, p.request, p.reason, p.expires_at];
    values.forEach(function (value, i) {
      const td = el('td');
      if (value === null) td.appendChild(taskLink(p.task));
      else if (i === 5) td.appendChild(el('code', value));
      else td.textContent = value;
      tr.appendChild(td);
    });
    const actions = el('td');
    const review = el('a', p.truncated ? 'review the whole request' : 'details');
    review.href = '/console/approvals/' + encodeURIComponent(p.id);
    actions.appendChild(review);
    actions.appendChild(document.createTextNode(' '));
    // A summary cut short is decided on the approval's own page, where all of it shows.
    if (approvals.dataset.decide === '1' && !p.truncated) {
      actions.appendChild(decisionForm(p.id, 'approve', 'Approve'));
      actions.appendChild(document.createTextNode(' '));
      actions.appendChild(decisionForm(p.id, 'deny', 'Deny'));
    }
    tr.appendChild(actions);
    return tr;
  }

  // Rows already shown stay as they are (an approver may be typing a comment in one).
  function syncApprovals(list) {
    const body = approvals.tBodies[0];
    const wanted = new Set(list.map(function (p) { return p.id; }));
    for (const row of Array.from(body.rows)) {
      if (!wanted.has(row.dataset.id)) row.remove();
    }
    const shown = new Set(Array.from(body.rows).map(function (r) { return r.dataset.id; }));
    for (const p of list) {
      if (!shown.has(p.id)) body.appendChild(approvalRow(p));
    }
    const none = document.getElementById('no-approvals');
    if (none) none.hidden = list.length > 0;
  }

  // ---------------------------------------------------------------- refresh

  let timer = null;
  let busy = false;

  function refreshSoon() {
    if (timer === null) timer = setTimeout(function () { timer = null; refresh(); }, 250);
  }

  async function refresh() {
    if (busy) { refreshSoon(); return; }
    busy = true;
    try {
      if (canvas || approvals) {
        const url = '/console/state' + (task ? '?task=' + encodeURIComponent(task) : '');
        const r = await fetch(url, { credentials: 'same-origin', headers: { accept: 'application/json' } });
        if (r.status === 401) { window.location.assign('/console/login'); return; }
        if (r.ok) {
          const s = await r.json();
          if (canvas) renderCells(s.cells);
          if (approvals && s.approvals) syncApprovals(s.approvals);
        }
      }
      if (log) {
        const r = await fetch('/console/tasks/' + encodeURIComponent(log.dataset.task) + '/log', { credentials: 'same-origin' });
        if (r.ok) log.textContent = await r.text();
      }
    } catch (_) {
      // The server is away; the next event or tick tries again.
    } finally {
      busy = false;
    }
  }

  // Budgets, tasks that start or end and output change without an event of their own
  // reaching every viewer: look again now and then too.
  if (canvas || approvals || log) setInterval(refresh, 3000);
})();
