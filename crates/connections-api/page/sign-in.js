// Signs in with a user token handed over in the URL fragment (never sent to
// the server in a URL, removed from the address bar at once) or pasted:
// POST /v1/session turns it into an HttpOnly, SameSite=Strict cookie, and
// the token is forgotten by the page.
const status = document.getElementById('status');
const form = document.getElementById('paste');

async function signIn(token) {
  const answer = await fetch('/v1/session', {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'X-Connections-Page': '1' },
    credentials: 'same-origin',
  });
  if (answer.ok) {
    location.replace('/');
    return;
  }
  let detail = 'the token was refused';
  try {
    const problem = await answer.json();
    detail = problem.detail || problem.title || detail;
  } catch (_) { /* not JSON */ }
  status.textContent = `Could not sign in: ${detail}.`;
  form.hidden = false;
}

const fragment = new URLSearchParams(location.hash.slice(1));
const handed = fragment.get('token');
history.replaceState(null, '', location.pathname);
if (handed) {
  signIn(handed);
} else {
  status.textContent = 'Paste the access token your identity provider issued.';
  form.hidden = false;
}
form.addEventListener('submit', (event) => {
  event.preventDefault();
  const input = document.getElementById('token');
  const token = input.value.trim();
  input.value = '';
  status.textContent = 'Signing you in…';
  signIn(token);
});
