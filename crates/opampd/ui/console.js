// The opampd console. Reads the admin API of the listener that served it (relative URLs, so it
// also works behind a path prefix) and renders it. Everything an agent reports is untrusted:
// every value reaches the page through textContent or a text node, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'opampd.adminToken';
  const STATUSES = ['online', 'degraded', 'error', 'disconnected', 'offline'];
  const POLL_MS = 10000;
  const MAX_COUNT_ROWS = 50;
  const MAX_TREE_DEPTH = 32;

  const $ = (id) => document.getElementById(id);

  /** A 401: the page asks for the token and stops polling until it has one. */
  class Unauthorized extends Error {}

  // ---- DOM helpers: the only way this file creates elements ----

  /** `el('td', {class: 'n'}, 'text', child)`: attributes are set as attributes (never `on*`),
   *  strings become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) throw new Error('no event attributes');
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) append(e, c);
    return e;
  }

  function append(parent, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach((c) => append(parent, c));
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }

  function setText(id, value) {
    $(id).textContent = value === undefined || value === null ? '' : String(value);
  }

  /** Any JSON value as display text: strings as they are, the rest as JSON. */
  function display(v) {
    if (v === undefined || v === null) return '';
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  function statusClass(status) {
    return STATUSES.includes(status) ? 'status-' + status : '';
  }

  function badge(text, cls) {
    return el('span', { class: 'badge ' + (cls || '') }, text);
  }

  function formatTime(ms) {
    if (typeof ms !== 'number' || !isFinite(ms) || ms <= 0) return '—';
    return new Date(ms).toISOString().replace('.000Z', 'Z');
  }

  function ago(ms) {
    if (typeof ms !== 'number' || !isFinite(ms) || ms <= 0) return '—';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function attr(agent, kind, key) {
    const d = agent.agent_description;
    if (!d || !d[kind] || typeof d[kind] !== 'object') return undefined;
    return Object.prototype.hasOwnProperty.call(d[kind], key) ? d[kind][key] : undefined;
  }

  function described(agent, key) {
    const v = attr(agent, 'identifying_attributes', key);
    return v !== undefined ? v : attr(agent, 'non_identifying_attributes', key);
  }

  // ---- the API ----

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    let resp;
    try {
      resp = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw new Error(path.split('?')[0] + ': ' + (e && e.message ? e.message : 'request failed'));
    }
    if (resp.status === 401) throw new Unauthorized('unauthorized');
    if (!resp.ok) {
      let msg = resp.status + (resp.statusText ? ' ' + resp.statusText : '');
      try {
        const body = await resp.json();
        if (body && typeof body.error === 'string') msg += ': ' + body.error;
      } catch (_) { /* not JSON */ }
      throw new Error(path.split('?')[0] + ': ' + msg);
    }
    return resp.json();
  }

  // ---- errors and the token prompt ----

  function showError(e) {
    if (e instanceof Unauthorized) {
      askToken();
      return;
    }
    const box = $('error');
    box.textContent = (e && e.message) ? e.message : String(e);
    box.hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  function askToken() {
    const refused = token() !== '';
    if (refused) {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off */ }
    }
    stopPolling();
    $('main').hidden = true;
    $('token-forget').hidden = true;
    $('token-dialog').hidden = false;
    const err = $('token-error');
    err.hidden = !refused;
    err.textContent = refused ? 'The token was refused (401). Enter the current admin token.' : '';
    $('token-input').value = '';
    $('token-input').focus();
  }

  function tokenSubmitted(ev) {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    if (!/^[\x21-\x7e]+$/.test(t)) {
      $('token-error').textContent = 'A token is printable ASCII without spaces.';
      $('token-error').hidden = false;
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) {
      $('token-error').textContent = 'This browser refuses session storage; the token cannot be kept.';
      $('token-error').hidden = false;
      return;
    }
    $('token-dialog').hidden = true;
    $('token-input').value = '';
    start();
  }

  function forgetToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off */ }
    askToken();
  }

  // ---- overview: /api/stats, polled ----

  let previousStats = null; // {at: ms, reasons: {reason: n}}

  function countRows(tbodyOwner, counts, onPick) {
    const tbody = $(tbodyOwner).tBodies[0];
    const entries = Object.entries(counts && typeof counts === 'object' ? counts : {})
      .filter(([, n]) => typeof n === 'number')
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    const max = entries.length ? entries[0][1] : 0;
    const rows = entries.slice(0, MAX_COUNT_ROWS).map(([name, n]) => {
      const bar = el('div', { class: 'bar' }, el('span'));
      bar.firstChild.style.width = (max ? Math.round((n / max) * 100) : 0) + '%';
      const tr = el('tr', { 'data-testid': 'count-row', 'data-key': name },
        el('td', {}, name === '' ? '(none)' : name, bar),
        el('td', { class: 'n' }, n));
      if (onPick) {
        tr.classList.add('clickable');
        tr.title = 'Show these agents';
        tr.addEventListener('click', () => onPick(name));
      }
      return tr;
    });
    if (entries.length > MAX_COUNT_ROWS) {
      rows.push(el('tr', {}, el('td', { class: 'muted', colspan: 2 },
        '+ ' + (entries.length - MAX_COUNT_ROWS) + ' more')));
    }
    tbody.replaceChildren(...rows);
    return entries.map(([name]) => name);
  }

  function fillDatalist(id, names) {
    $(id).replaceChildren(...names.slice(0, 500).map((n) => el('option', { value: n })));
  }

  function renderStats(stats) {
    const byStatus = stats.by_status || {};
    setText('count-total', typeof stats.total === 'number' ? stats.total : '—');
    for (const s of STATUSES) setText('count-' + s, typeof byStatus[s] === 'number' ? byStatus[s] : 0);

    fillDatalist('service-names', countRows('by-service', stats.by_service,
      (name) => filterBy({ service_name: name })));
    fillDatalist('version-names', countRows('by-version', stats.by_version,
      (name) => filterBy({ version: name })));
    countRows('by-remote-config', stats.by_remote_config, null);

    // ReportFullState by reason, with the rate since the previous poll
    const reasons = stats.report_full_state && typeof stats.report_full_state === 'object'
      ? stats.report_full_state : {};
    const now = Date.now();
    const prev = previousStats;
    const minutes = prev ? (now - prev.at) / 60000 : 0;
    const rate = (reason) => {
      if (!prev || minutes <= 0 || typeof prev.reasons[reason] !== 'number') return null;
      const d = reasons[reason] - prev.reasons[reason];
      return d >= 0 ? d / minutes : null; // a restart resets the counters
    };
    let total = prev && minutes > 0 ? 0 : null;
    const rows = Object.keys(reasons).sort().map((reason) => {
      const r = rate(reason);
      if (total !== null) total = r === null ? null : total + r;
      return el('tr', { 'data-testid': 'full-state-row', 'data-key': reason },
        el('td', {}, reason),
        el('td', { class: 'n' }, display(reasons[reason])),
        el('td', { class: 'n' }, r === null ? '—' : r.toFixed(1)));
    });
    $('full-state').tBodies[0].replaceChildren(...rows);
    setText('drift-rate', total === null ? 'measuring…' : total.toFixed(1));
    previousStats = { at: now, reasons: Object.assign({}, reasons) };
  }

  async function loadStats() {
    const stats = await api('api/stats');
    renderStats(stats);
    return stats;
  }

  // ---- remote configs: /api/configs, polled ----

  function renderConfigs(body) {
    const configs = Array.isArray(body.configs) ? body.configs : [];
    $('configs-empty').hidden = configs.length > 0;
    const rows = configs.map((c) => {
      const selector = Object.entries(c.selector || {}).map(([k, v]) =>
        el('span', { class: 'chip' }, k + '=' + display(v)));
      const files = Object.keys(c.files || {}).map((f) => el('span', { class: 'chip' }, f || '(unnamed)'));
      const r = c.rollout;
      const rollout = r
        ? [r.max_agents_per_minute ? r.max_agents_per_minute + '/min' : 'unpaced',
          r.pause_on_failures ? 'pause after ' + r.pause_on_failures + ' failures' : null]
          .filter(Boolean).join(', ')
        : 'unpaced';
      const st = c.rollout_state || {};
      const state = st.paused
        ? badge('paused', 'bad')
        : badge('rolling out', 'ok');
      const a = c.agents || {};
      const n = (k) => el('td', { class: 'n', 'data-col': k }, typeof a[k] === 'number' ? a[k] : '—');
      return el('tr', { 'data-testid': 'config-row', 'data-name': display(c.name) },
        el('td', { 'data-col': 'name' }, display(c.name)),
        el('td', {}, selector.length ? selector : el('span', { class: 'muted' }, 'all agents')),
        el('td', {}, files),
        el('td', { class: 'mono', title: display(c.hash) }, display(c.hash).slice(0, 12)),
        el('td', {}, rollout),
        el('td', { 'data-col': 'state', 'data-paused': st.paused ? 'true' : 'false' }, state,
          st.failures ? ' ' + st.failures + ' failures' : ''),
        n('matched'), n('applied'), n('applying'), n('failed'), n('pending'));
    });
    $('config-table').tBodies[0].replaceChildren(...rows);
  }

  async function loadConfigs() {
    renderConfigs(await api('api/configs'));
  }

  // ---- the agent table: /api/agents with filters and cursors ----

  const table = {
    filters: { status: '', service_name: '', version: '', q: '' },
    limit: 50,
    cursors: [null], // cursors[i] fetches page i
    page: 0,
    request: 0, // the latest request's number: older answers are dropped
  };

  function readFilters() {
    table.filters = {
      status: $('filter-status').value,
      service_name: $('filter-service').value.trim(),
      version: $('filter-version').value.trim(),
      q: $('filter-q').value.trim(),
    };
    table.limit = Number($('page-size').value) || 50;
  }

  function writeFilters() {
    $('filter-status').value = table.filters.status;
    $('filter-service').value = table.filters.service_name;
    $('filter-version').value = table.filters.version;
    $('filter-q').value = table.filters.q;
    for (const card of document.querySelectorAll('#status-cards .card')) {
      card.classList.toggle('active', card.dataset.status === table.filters.status);
    }
  }

  /** A new query: back to its first page. */
  function resetPages() {
    table.cursors = [null];
    table.page = 0;
  }

  function filterBy(changes) {
    table.filters = Object.assign(
      { status: '', service_name: '', version: '', q: '' }, changes);
    writeFilters();
    resetPages();
    showFleet();
    loadAgents().catch(showError);
    $('agents').scrollIntoView({ block: 'start' });
  }

  function agentQuery() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(table.filters)) if (v) p.set(k, v);
    p.set('limit', String(table.limit));
    const cursor = table.cursors[table.page];
    if (cursor) p.set('cursor', cursor);
    return p.toString();
  }

  function agentRow(a) {
    const uid = display(a.instance_uid);
    const rc = a.remote_config || {};
    const rcText = rc.status || (rc.desired_name ? 'pending: ' + display(rc.desired_name) : '—');
    return el('tr', { 'data-testid': 'agent-row', 'data-uid': uid },
      el('td', { class: 'mono', 'data-col': 'uid' },
        el('a', { href: '#agent/' + encodeURIComponent(uid), 'data-testid': 'agent-link' }, uid)),
      el('td', { 'data-col': 'status' }, badge(display(a.status), statusClass(a.status))),
      el('td', { 'data-col': 'service', title: display(described(a, 'service.name')) },
        display(described(a, 'service.name'))),
      el('td', { 'data-col': 'version' }, display(described(a, 'service.version'))),
      el('td', { 'data-col': 'host', title: display(described(a, 'host.name')) },
        display(described(a, 'host.name'))),
      el('td', { class: 'n', 'data-col': 'seq' }, display(a.sequence_num)),
      el('td', { 'data-col': 'last-checkin', title: formatTime(a.last_checkin_ms) }, ago(a.last_checkin_ms)),
      el('td', { 'data-col': 'remote-config' }, rcText));
  }

  async function loadAgents() {
    const n = ++table.request;
    const section = $('agents');
    section.dataset.state = 'loading';
    $('agent-table').setAttribute('aria-busy', 'true');
    let body;
    try {
      body = await api('api/agents?' + agentQuery());
    } catch (e) {
      if (n === table.request) section.dataset.state = 'error';
      throw e;
    }
    if (n !== table.request) return; // a newer query was sent meanwhile
    const agents = Array.isArray(body.agents) ? body.agents : [];
    $('agent-table').tBodies[0].replaceChildren(...agents.map(agentRow));
    $('agents-empty').hidden = agents.length > 0;
    const next = typeof body.next_cursor === 'string' && body.next_cursor ? body.next_cursor : null;
    table.cursors.length = table.page + 1;
    if (next) table.cursors.push(next);
    $('page-prev').disabled = table.page === 0;
    $('page-next').disabled = !next;
    const first = table.page * table.limit;
    setText('page-info', agents.length
      ? 'Page ' + (table.page + 1) + ' · agents ' + (first + 1) + '–' + (first + agents.length)
      : 'Page ' + (table.page + 1));
    $('agent-table').setAttribute('aria-busy', 'false');
    section.dataset.query = agentQuery();
    section.dataset.state = 'ready';
  }

  // ---- one agent ----

  /** Attribute rows, sorted by key unless `ordered` (the caller's order is the meaning). */
  function kvRows(tableId, obj, ordered) {
    const entries = Object.entries(obj && typeof obj === 'object' ? obj : {});
    if (!ordered) entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const rows = entries.map(([k, v]) => el('tr', { 'data-key': k },
      el('th', { scope: 'row' }, k),
      v === undefined || v === null ? el('td', { class: 'muted' }, '—') : el('td', {}, display(v))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { class: 'muted', colspan: 2 }, 'none reported')));
    $(tableId).tBodies[0].replaceChildren(...rows);
  }

  function healthNode(name, h, depth) {
    if (!h || typeof h !== 'object') return el('li', {}, name);
    const healthy = h.healthy === true;
    const li = el('li', { 'data-testid': 'health-node', 'data-component': name, 'data-healthy': String(healthy) },
      el('span', { class: 'hname' }, name), ' ',
      badge(healthy ? 'healthy' : 'unhealthy', healthy ? 'ok' : 'bad'), ' ',
      h.status ? el('span', { class: 'hstatus' }, display(h.status)) : null,
      h.last_error ? el('span', { class: 'herr' }, display(h.last_error)) : null,
      h.status_time_unix_nano
        ? el('span', { class: 'hmeta' }, ' since ' + formatTime(Number(h.status_time_unix_nano) / 1e6))
        : null);
    const children = Object.keys(h.component_health_map || {}).sort();
    if (children.length) {
      if (depth >= MAX_TREE_DEPTH) {
        li.appendChild(el('div', { class: 'muted' }, children.length + ' deeper components not shown'));
      } else {
        li.appendChild(el('ul', {}, children.map((c) => healthNode(c, h.component_health_map[c], depth + 1))));
      }
    }
    return li;
  }

  function renderRemoteConfig(rc) {
    rc = rc || {};
    let verdict;
    let cls;
    if (!rc.desired_hash) {
      verdict = rc.reported_hash ? 'no config selects this agent (it reports one)' : 'no config selects this agent';
      cls = '';
    } else if (rc.status === 'failed' && rc.reported_hash === rc.desired_hash) {
      verdict = 'failed'; cls = 'bad';
    } else if (rc.status === 'applied' && rc.reported_hash === rc.desired_hash) {
      verdict = 'applied'; cls = 'ok';
    } else {
      verdict = rc.offered_hash === rc.desired_hash ? 'sent, not applied yet' : 'pending'; cls = 'warn';
    }
    const v = $('detail-remote-verdict');
    v.className = 'badge ' + cls;
    v.textContent = verdict;
    kvRows('detail-remote-config', {
      'desired config': rc.desired_name,
      'desired hash': rc.desired_hash,
      'offered hash': rc.offered_hash,
      'offered at': rc.offered_at_ms ? formatTime(rc.offered_at_ms) : null,
      'reported hash': rc.reported_hash,
      'reported status': rc.status,
      'error message': rc.error_message,
    }, true);
  }

  /** A config body as stored: opampd keeps it as JSON text (YAML converted, secrets
   *  redacted), shown indented; anything else as it is. */
  function readable(body) {
    const t = body.trimStart();
    if (t.startsWith('{') || t.startsWith('[')) {
      try { return JSON.stringify(JSON.parse(body), null, 2); } catch (_) { /* as it is */ }
    }
    return body;
  }

  function renderEffectiveConfig(ec) {
    const files = ec && ec.config_map && typeof ec.config_map === 'object' ? ec.config_map : {};
    const names = Object.keys(files).sort();
    const parts = names.map((name) => {
      const f = files[name] || {};
      return el('div', { 'data-testid': 'config-file', 'data-name': name },
        el('span', { class: 'file-name' }, name === '' ? '(unnamed file)' : name), ' ',
        el('span', { class: 'muted' }, display(f.content_type)),
        el('pre', { class: 'code' }, readable(display(f.body))));
    });
    if (!parts.length) parts.push(el('p', { class: 'muted' }, 'none reported'));
    $('detail-effective-config').replaceChildren(...parts);
  }

  function renderAgent(a) {
    setText('detail-uid', display(a.instance_uid));
    const st = $('detail-status');
    st.className = 'badge ' + statusClass(a.status);
    st.textContent = display(a.status);
    setText('detail-seq', display(a.sequence_num));
    const last = $('detail-last-checkin');
    last.textContent = formatTime(a.last_checkin_ms) + ' (' + ago(a.last_checkin_ms) + ')';
    setText('detail-enrolled', formatTime(a.enrolled_at_ms));
    setText('detail-stored-status', display(a.stored_status));
    const names = Array.isArray(a.capability_names) ? a.capability_names : [];
    $('detail-capabilities').replaceChildren(
      ...names.map((n) => el('span', { class: 'chip', 'data-testid': 'capability' }, display(n))),
      el('span', { class: 'muted mono' }, '0x' + Number(a.capabilities || 0).toString(16)));
    const d = a.agent_description || {};
    kvRows('detail-identifying', d.identifying_attributes);
    kvRows('detail-non-identifying', d.non_identifying_attributes);
    $('detail-health').replaceChildren(a.health
      ? el('ul', {}, healthNode('agent', a.health, 0))
      : el('p', { class: 'muted' }, 'no health reported'));
    renderRemoteConfig(a.remote_config);
    renderEffectiveConfig(a.effective_config);
    $('detail-raw').textContent = JSON.stringify(a, null, 2);
  }

  let detailRequest = 0;

  async function showDetail(uid) {
    const n = ++detailRequest;
    const section = $('agent-detail');
    $('fleet-view').hidden = true;
    section.hidden = false;
    section.dataset.state = 'loading';
    section.dataset.uid = uid;
    let agent;
    try {
      agent = await api('api/agents/' + encodeURIComponent(uid));
    } catch (e) {
      if (n === detailRequest) section.dataset.state = 'error';
      throw e;
    }
    if (n !== detailRequest) return;
    renderAgent(agent);
    section.dataset.state = 'ready';
    window.scrollTo(0, 0);
  }

  function showFleet() {
    detailRequest++;
    $('agent-detail').hidden = true;
    $('agent-detail').dataset.state = 'idle';
    $('fleet-view').hidden = false;
    if (location.hash.startsWith('#agent/')) {
      history.replaceState(null, '', location.pathname + location.search);
    }
  }

  function route() {
    const m = /^#agent\/(.+)$/.exec(location.hash);
    if (m) {
      let uid;
      try { uid = decodeURIComponent(m[1]); } catch (_) { uid = m[1]; }
      showDetail(uid).catch(showError);
    } else {
      showFleet();
    }
  }

  // ---- polling and start ----

  let pollTimer = null;
  let running = false;

  function stopPolling() {
    running = false;
    if (pollTimer) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function schedulePoll() {
    if (pollTimer) clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    pollTimer = null;
    if (!running) return;
    if (!document.hidden) {
      try {
        await Promise.all([loadStats(), loadConfigs()]);
        clearError();
        setText('updated', 'updated ' + new Date().toLocaleTimeString());
      } catch (e) {
        showError(e);
        if (e instanceof Unauthorized) return;
      }
    }
    if (running) schedulePoll();
  }

  /** Loads everything once (the first answer tells whether a token is needed), then polls. */
  async function start() {
    stopPolling();
    previousStats = null;
    try {
      await loadStats();
    } catch (e) {
      showError(e);
      return;
    }
    $('token-dialog').hidden = true;
    $('main').hidden = false;
    $('token-forget').hidden = !token();
    clearError();
    setText('updated', 'updated ' + new Date().toLocaleTimeString());
    running = true;
    schedulePoll();
    route();
    try {
      await Promise.all([loadConfigs(), loadAgents()]);
    } catch (e) {
      showError(e);
    }
  }

  function refreshNow() {
    if (!running) return;
    Promise.all([loadStats(), loadConfigs(), loadAgents()])
      .then(() => {
        clearError();
        setText('updated', 'updated ' + new Date().toLocaleTimeString());
      })
      .catch(showError);
    if (!$('agent-detail').hidden && $('agent-detail').dataset.uid) {
      showDetail($('agent-detail').dataset.uid).catch(showError);
    }
  }

  function wire() {
    $('token-form').addEventListener('submit', tokenSubmitted);
    $('token-forget').addEventListener('click', forgetToken);
    $('refresh').addEventListener('click', refreshNow);
    $('agent-filters').addEventListener('submit', (ev) => {
      ev.preventDefault();
      readFilters();
      writeFilters();
      resetPages();
      loadAgents().catch(showError);
    });
    $('filter-status').addEventListener('change', () => {
      readFilters();
      writeFilters();
      resetPages();
      loadAgents().catch(showError);
    });
    $('page-size').addEventListener('change', () => {
      readFilters();
      resetPages();
      loadAgents().catch(showError);
    });
    $('filter-clear').addEventListener('click', () => filterBy({}));
    $('page-next').addEventListener('click', () => {
      if (table.cursors.length <= table.page + 1) return;
      table.page += 1;
      loadAgents().catch(showError);
    });
    $('page-prev').addEventListener('click', () => {
      if (table.page === 0) return;
      table.page -= 1;
      loadAgents().catch(showError);
    });
    for (const card of document.querySelectorAll('#status-cards .card')) {
      card.addEventListener('click', () => filterBy({ status: card.dataset.status || '' }));
    }
    $('detail-close').addEventListener('click', () => {
      showFleet();
      $('agents').scrollIntoView({ block: 'start' });
    });
    window.addEventListener('hashchange', () => { if (running) route(); });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && running && !pollTimer) poll();
    });
    readFilters();
  }

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    start();
  });
})();
