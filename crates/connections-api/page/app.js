// The Connections page: cards per service, a service's connections, a
// connection's usage, actions and history, kept live by GET /v1/stream.
//
// Authentication is the HttpOnly session cookie (or whatever an
// identity-aware proxy adds): this script never sees a token. Every request
// carries `X-Connections-Page: 1`, which the server requires of
// cookie-authenticated commands (a cross-site form cannot send it). No
// secret is rendered or stored: credential forms are password fields,
// cleared once sent.

const main = document.getElementById('main');
const alertBox = document.getElementById('alert');

/** The highest log position this page's own commands reached: reads wait
 * for the read models to include it (`min_position`). */
let ownPosition = 0;

// ---------------------------------------------------------------- the API

class Problem extends Error {
  constructor(status, problem) {
    super(problem.detail ? `${problem.title}: ${problem.detail}` : (problem.title || `HTTP ${status}`));
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  for (let attempt = 1; ; attempt += 1) {
    const headers = { 'X-Connections-Page': '1', Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const answer = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (answer.status === 503 && attempt < 4) {
      const wait = Number(answer.headers.get('Retry-After')) || attempt;
      await new Promise((done) => setTimeout(done, Math.min(wait, 5) * 1000));
      continue;
    }
    if (answer.status === 401) {
      location.assign('/sign-in');
      throw new Problem(401, { title: 'Your session ended', detail: 'sign in again' });
    }
    const text = await answer.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!answer.ok) {
      throw new Problem(answer.status, json && typeof json === 'object' ? json : {});
    }
    if (json && typeof json.position === 'number') ownPosition = Math.max(ownPosition, json.position);
    return json;
  }
}

function read(path) {
  const separator = path.includes('?') ? '&' : '?';
  return api('GET', ownPosition > 0 ? `${path}${separator}min_position=${ownPosition}` : path);
}

// ---------------------------------------------------------------- helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  return el('time', { datetime: iso }, date.toLocaleString());
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function showError(error) {
  alertBox.hidden = false;
  alertBox.textContent = error instanceof Problem ? `${error.message}.` : `Something went wrong: ${error.message}`;
}

function clearError() {
  alertBox.hidden = true;
  alertBox.textContent = '';
}

async function act(work) {
  clearError();
  try {
    await work();
    await render();
  } catch (error) {
    showError(error);
  }
}

function confirmDialog(title, body, okLabel) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-body').replaceChildren(...body);
  document.getElementById('confirm-ok').textContent = okLabel;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((done) => {
    dialog.addEventListener('close', () => done(dialog.returnValue === 'ok'), { once: true });
  });
}

const path = (id) => encodeURIComponent(id);

// ---------------------------------------------------------------- views

/** The services connectable through an OAuth provider (asked once). */
let providersAsked = null;
function providers() {
  providersAsked ??= api('GET', '/v1/providers').catch(() => ({ providers: [] }));
  return providersAsked;
}

async function cardsView() {
  const [{ services }, configured] = await Promise.all([read('/v1/services'), providers()]);
  const cards = services.map((card) => el('li', { class: 'card' },
    el('h2', {}, el('a', { href: `#/service/${path(card.service)}` }, card.service)),
    el('p', { class: 'count', 'data-service': card.service }, plural(card.active_connections, 'connection', 'connections')),
    el('p', {}, plural(card.agent_count, 'agent', 'agents')),
    card.default_connection_id ? el('p', {}, 'Default set') : el('p', { class: 'muted' }, 'No default'),
    card.needs_attention > 0 ? el('p', { class: 'attention' }, `${card.needs_attention} need attention`) : null));
  const connect = (configured.providers || []).map((provider) => el('li', {},
    el('button', { type: 'button', onclick: () => act(async () => {
      const started = await api('POST', `/v1/connect/${path(provider.service)}`, {});
      location.assign(started.authorize_url);
    }) }, `Connect ${provider.service}`)));
  return [
    el('h1', {}, 'Your connections'),
    services.length === 0 ? el('p', {}, 'No connections yet.') : el('ul', { class: 'cards', 'aria-label': 'Services' }, cards),
    connect.length ? el('section', { 'aria-labelledby': 'connect-title' },
      el('h2', { id: 'connect-title' }, 'Connect a service'), el('ul', { class: 'plain' }, connect)) : null,
  ];
}

async function serviceView(service) {
  const { connections } = await read(`/v1/connections?service=${path(service)}&status=all&limit=200`);
  if (connections.length === 0) return notFound();
  const rows = connections.map((c) => el('tr', {},
    el('th', { scope: 'row' }, el('a', { href: `#/connection/${path(c.connection_id)}` }, c.name)),
    el('td', {}, c.credential_kind),
    el('td', {}, when(c.created_at)),
    el('td', {}, when(c.last_changed_at)),
    el('td', {}, c.status, c.needs_attention ? el('span', { class: 'attention' }, ' (needs attention)') : null),
    el('td', {}, c.is_default ? 'Default' : ''),
    el('td', {}, String(c.agent_count)),
    el('td', {}, c.status === 'active' ? defaultButton(service, c) : null)));
  return [
    el('h1', {}, service),
    el('div', { class: 'scroll' }, el('table', {},
      el('caption', {}, plural(connections.length, 'connection', 'connections')),
      el('thead', {}, el('tr', {}, ['Name', 'Kind', 'Created', 'Last changed', 'Status', 'Default', 'Agents', 'Actions']
        .map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows))),
  ];
}

function defaultButton(service, connection) {
  return connection.is_default
    ? el('button', { type: 'button', onclick: () => act(() => api('DELETE', `/v1/services/${path(service)}/default`)) },
      `Clear default`)
    : el('button', { type: 'button', onclick: () => act(() => api('PUT', `/v1/services/${path(service)}/default`,
      { connection_id: connection.connection_id })) }, `Make ${connection.name} the default`);
}

const SOURCES = { created: 'bound when it was created', assigned: 'assigned by you', default: 'using the default' };

async function connectionView(id) {
  let usage;
  try {
    usage = await read(`/v1/connections/${path(id)}/agents`);
  } catch (error) {
    if (error instanceof Problem && (error.status === 404 || error.status === 400)) return notFound();
    throw error;
  }
  const c = usage.connection;
  const active = c.status === 'active';
  const agents = usage.agents.map((a) => el('li', {},
    el('strong', {}, a.agent_id), ` — ${SOURCES[a.source] || a.source} since `, when(a.since), ' ',
    active ? el('button', { type: 'button', class: 'link',
      onclick: () => act(() => api('DELETE', `/v1/connections/${path(id)}/agents/${path(a.agent_id)}`)) },
    `Unassign ${a.agent_id}`) : null));
  const view = [
    el('p', {}, el('a', { href: `#/service/${path(c.service)}` }, `← ${c.service}`)),
    el('h1', {}, c.name),
    el('dl', {},
      el('dt', {}, 'Status'), el('dd', { id: 'status' }, c.status, c.needs_attention ? ' — needs attention' : ''),
      el('dt', {}, 'Kind'), el('dd', {}, `${c.credential_kind}, version ${c.credential_version}`),
      el('dt', {}, 'Default'), el('dd', {}, c.is_default ? 'Yes' : 'No'),
      el('dt', {}, 'Created'), el('dd', {}, when(c.created_at))),
    el('h2', {}, `Used by ${plural(usage.agents.length, 'agent', 'agents')}`),
    usage.agents.length ? el('ul', { id: 'usage' }, agents) : el('p', { id: 'usage' }, 'No agent uses it.'),
  ];
  const oauth = ((await providers()).providers || []).some((p) => p.service === c.service);
  if (active) {
    view.push(el('section', { class: 'actions', 'aria-label': 'Actions' },
      el('button', { type: 'button', class: 'danger', onclick: () => revoke(id, c, usage.agents) }, 'Revoke'),
      oauth ? el('button', { type: 'button', onclick: () => act(async () => {
        const started = await api('POST', `/v1/connections/${path(id)}/reconnect`, {});
        location.assign(started.authorize_url);
      }) }, c.needs_attention ? 'Reconnect (needed)' : 'Reconnect') : null,
      defaultButton(c.service, c),
      assignForm(id),
      credentialForm('Rotate the credential', 'rotate', (credential) =>
        api('PUT', `/v1/connections/${path(id)}/credential`, { credential })),
      credentialForm('Replace with a new connection', 'replace', async (credential) => {
        const replaced = await api('POST', `/v1/connections/${path(id)}/replace`, { credential });
        location.hash = `#/connection/${path(replaced.connection_id)}`;
      })));
  }
  view.push(el('div', { id: 'outcome', role: 'status' }));
  view.push(await historySection(id));
  return view;
}

async function revoke(id, connection, agents) {
  const names = agents.map((a) => a.agent_id);
  const body = [el('p', {}, names.length
    ? `Revoking “${connection.name}” stops ${plural(names.length, 'agent', 'agents')} at once:`
    : `Revoking “${connection.name}” affects no agent.`)];
  if (names.length) body.push(el('ul', { id: 'affected-before' }, names.map((n) => el('li', {}, n))));
  if (!(await confirmDialog('Revoke this connection?', body, 'Revoke'))) return;
  await act(async () => {
    const answer = await api('DELETE', `/v1/connections/${path(id)}`);
    sessionNote = answer.affected_agents.length
      ? `Revoked. Affected agents: ${answer.affected_agents.join(', ')}.`
      : 'Revoked. No agent was using it.';
  });
}

/** A sentence kept across one re-render (the outcome of the last command). */
let sessionNote = '';

function assignForm(id) {
  const input = el('input', { id: 'assign-agent', name: 'agent', required: true, pattern: '[A-Za-z0-9_\\-]{1,128}' });
  return el('form', { class: 'inline', onsubmit: (event) => {
    event.preventDefault();
    const agent = input.value;
    act(() => api('POST', `/v1/connections/${path(id)}/agents`, { agent_id: agent }));
  } }, el('label', { for: 'assign-agent' }, 'Assign to agent'), input, el('button', { type: 'submit' }, 'Assign'));
}

function credentialForm(title, key, send) {
  const kind = el('select', { id: `${key}-kind`, name: 'kind' },
    el('option', { value: 'api_key' }, 'API key'), el('option', { value: 'basic' }, 'Username and password'),
    el('option', { value: 'oauth2' }, 'OAuth access token'));
  const secret = el('input', { id: `${key}-secret`, type: 'password', autocomplete: 'off', required: true });
  const user = el('input', { id: `${key}-user`, type: 'password', autocomplete: 'off' });
  const form = el('form', { class: 'credential', onsubmit: (event) => {
    event.preventDefault();
    const credential = kind.value === 'api_key' ? { kind: 'api_key', key: secret.value }
      : kind.value === 'basic' ? { kind: 'basic', username: user.value, password: secret.value }
        : { kind: 'oauth2', access_token: secret.value };
    form.reset();
    act(() => send(credential));
  } },
  el('fieldset', {}, el('legend', {}, title),
    el('label', { for: `${key}-kind` }, 'Kind'), kind,
    el('label', { for: `${key}-user` }, 'Username (for username and password)'), user,
    el('label', { for: `${key}-secret` }, 'Secret'), secret,
    el('button', { type: 'submit' }, title.split(' ')[0])));
  return form;
}

function actorWords(actor) {
  if (!actor) return 'someone';
  if (actor.startsWith('service:')) return 'the server';
  if (actor.startsWith('agent:')) return `agent ${actor.slice(6)}`;
  return actor;
}

function sentence(event) {
  const d = event.data || {};
  const by = actorWords(event.actor);
  switch (event.event_type) {
    case 'connection_created': return `Created by ${by}${d.agent_id ? ` for agent ${d.agent_id}` : ''}${d.replaces ? ', replacing another connection' : ''}`;
    case 'oauth_granted': return `The provider granted ${(d.scopes || []).join(', ') || 'no scopes'}`;
    case 'agent_assigned': return `Agent ${d.agent_id} ${SOURCES[d.source] || d.source} (by ${by})`;
    case 'agent_unassigned': return `Agent ${d.agent_id} stopped using it (${d.reason}, by ${by})`;
    case 'credential_rotated': return `Credential rotated to version ${d.credential_version} by ${by}`;
    case 'credential_refreshed': return `Tokens refreshed by ${by} (version ${d.credential_version})`;
    case 'credential_rejected': return d.agent_id
      ? `Agent ${d.agent_id} reported the provider rejected version ${d.credential_version}`
      : `The provider refused to refresh version ${d.credential_version}: reconnect it`;
    case 'default_set': return `Made the default by ${by}`;
    case 'default_cleared': return `No longer the default (${d.reason === 'revoked' ? 'revoked' : `cleared by ${by}`})`;
    case 'connection_revoked': return `Revoked by ${by}, ${plural((d.affected_agents || []).length, 'agent', 'agents')} affected${d.replaced_by ? ' (replaced)' : ''}`;
    case 'upstream_revoked': return d.outcome === 'revoked'
      ? 'Its tokens were revoked at the provider'
      : `Gave up revoking its tokens at the provider after ${plural(d.attempts, 'attempt', 'attempts')}`;
    default: return `${event.event_type} by ${by}`;
  }
}

async function historySection(id, cursor) {
  // The history is read from the log itself: always current.
  const page = await api('GET', `/v1/connections/${path(id)}/history?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
  const list = el('ol', { id: 'history' }, page.events.map((event) =>
    el('li', {}, when(event.recorded_at), ' — ', sentence(event))));
  const section = el('section', { 'aria-labelledby': 'history-title' }, el('h2', { id: 'history-title' }, 'History'), list);
  if (page.next_cursor) {
    const more = el('button', { type: 'button', onclick: async () => {
      more.remove();
      try {
        const next = await historySection(id, page.next_cursor);
        list.append(...next.querySelector('ol').children);
        const nextMore = next.querySelector('button');
        if (nextMore) section.append(nextMore);
      } catch (error) { showError(error); }
    } }, 'Show older');
    section.append(more);
  }
  return section;
}

async function reviewView() {
  const { findings } = await read('/v1/review');
  return [
    el('h1', {}, 'Review'),
    findings.length === 0 ? el('p', {}, 'Nothing to review.') : el('ul', {}, findings.map((f) => el('li', {},
      el('a', { href: `#/connection/${path(f.connection_id)}` }, f.name || f.connection_id), ` — ${f.reason}. ${f.action}`))),
  ];
}

function notFound() {
  return [el('h1', {}, 'Not found'), el('p', {}, 'There is no such connection or service among yours.'),
    el('p', {}, el('a', { href: '#/' }, 'Back to your connections'))];
}

// ---------------------------------------------------------------- routing

let rendering = null;
let again = false;
let againLive = true;

/** Renders the view the address names. A `live` render (a change made
 * elsewhere) is not applied while the user is typing into a form of the
 * view: it waits until they leave it (see `liveRender`). */
async function render(live = false) {
  if (rendering) {
    again = true;
    againLive = againLive && live;
    return rendering;
  }
  rendering = (async () => {
    let thisLive = live;
    do {
      again = false;
      const [, kind, arg] = location.hash.match(/^#\/(service|connection|review)?\/?(.*)$/) || [];
      try {
        const view = kind === 'service' ? await serviceView(decodeURIComponent(arg))
          : kind === 'connection' ? await connectionView(decodeURIComponent(arg))
            : kind === 'review' ? await reviewView() : await cardsView();
        if (thisLive && editing()) {
          pendingLive = true;
        } else {
          main.replaceChildren(...view.filter((node) => node));
          const outcome = document.getElementById('outcome');
          if (outcome && sessionNote) outcome.textContent = sessionNote;
          main.dataset.rendered = String(Date.now());
        }
      } catch (error) {
        showError(error);
      }
      thisLive = againLive;
      againLive = true;
    } while (again);
    rendering = null;
  })();
  return rendering;
}

window.addEventListener('hashchange', () => { sessionNote = ''; clearError(); render(); main.focus(); });

// ---------------------------------------------------------------- live

const EVENT_TYPES = ['connection_created', 'oauth_granted', 'agent_assigned', 'agent_unassigned', 'credential_rotated',
  'credential_refreshed', 'credential_rejected', 'default_set', 'default_cleared', 'connection_revoked', 'upstream_revoked'];

/** Whether the user is typing into a form of the view: a live update then
 * waits until they leave it, so that it never wipes what they typed. */
function editing() {
  return [...main.querySelectorAll('input')].some((input) => input === document.activeElement || input.value !== '');
}

let pendingLive = false;

function liveRender() {
  if (editing()) {
    pendingLive = true;
    return;
  }
  pendingLive = false;
  render(true);
}

main.addEventListener('focusout', () => setTimeout(() => { if (pendingLive) liveRender(); }, 0));

function live() {
  const stream = new EventSource('/v1/stream');
  for (const type of EVENT_TYPES) stream.addEventListener(type, liveRender);
  stream.addEventListener('error', () => {
    // The browser reconnects by itself (with Last-Event-ID); a stream that
    // ended because the session expired is closed for good.
    if (stream.readyState === EventSource.CLOSED) setTimeout(live, 2000);
  });
}

document.getElementById('sign-out').addEventListener('click', async () => {
  await fetch('/v1/session', { method: 'DELETE', headers: { 'X-Connections-Page': '1' }, credentials: 'same-origin' });
  location.assign('/sign-in');
});

// Who is signed in and the first view are asked for at once.
api('GET', '/v1/session')
  .then((session) => { document.getElementById('who').textContent = `Signed in as ${session.user}`; })
  .catch(showError);
render().then(live);
