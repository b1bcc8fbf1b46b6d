// A real OAuth 2.0 authorization server on loopback for the tests
// (oauth2-mock-server: authorization code with PKCE, refresh tokens,
// RFC 7009 revocation). Prints `listening on <issuer URL>` and then obeys
// one command per stdin line, each applying to the next token response:
//   error <code>        answer 400 {"error": <code>}
//   status <n>          answer HTTP <n> with a non-JSON body
//   garbage             answer 200 with a body that is not JSON
//   scope <scopes…>     grant only these scopes
//   throttle <seconds>  answer 429 with `Retry-After: <seconds>`
//   hold <ms>           answer the next token request only after <ms>
//   expires <seconds>   access tokens live this long (every response)
//   deny                the next authorization redirects with error=access_denied
//   revoke-status <n> <count>
//                       answer the next <count> revocation requests with HTTP <n>
// and answers, without changing anything:
//   refreshes           `ok refreshes <n>`: refresh-token grants answered so far
//   revocations         `ok revocations <n> <token…>`: revocation requests
//                       answered 200 so far, and the tokens they named
//   issued              `ok issued <refresh token> <access token>`: the last ones issued
// Exits when stdin closes (the test that started it is gone). Listens on
// OAUTH_PROVIDER_PORT when set (ops/oauth-demo), else on any free port.
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';
import http from 'node:http';
import readline from 'node:readline';

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);
const handle = service.requestHandler;
let expiresIn = 3600;
let refreshes = 0;
let hold = 0;
let lastIssued = '- -';
const revoked = [];
let revokeFailures = { status: 200, count: 0 };

service.on('beforeResponse', (response, req) => {
  if (req.body && req.body.grant_type === 'refresh_token') {
    refreshes += 1;
  }
  if (response.body && typeof response.body === 'object' && response.body.access_token) {
    response.body.expires_in = expiresIn;
    lastIssued = `${response.body.refresh_token ?? '-'} ${response.body.access_token}`;
  }
});

service.on('beforeRevoke', (response, req) => {
  if (revokeFailures.count > 0) {
    revokeFailures.count -= 1;
    response.statusCode = revokeFailures.status;
  } else {
    revoked.push(req.revokedToken);
  }
});

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/revoke')) {
    // The library's revocation endpoint does not parse its form: read the
    // token here (RFC 7009 §2.1) so that tests can see what was revoked.
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      req.revokedToken = new URLSearchParams(body).get('token') ?? '-';
      handle(req, res);
    });
  } else if (hold > 0 && req.url.startsWith('/token')) {
    const ms = hold;
    hold = 0;
    setTimeout(() => handle(req, res), ms);
  } else {
    handle(req, res);
  }
});

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [command, ...args] = line.trim().split(/\s+/);
  let reply = `ok ${command}`;
  if (command === 'error') {
    service.once('beforeResponse', (response) => {
      response.statusCode = 400;
      response.body = { error: args[0] };
    });
  } else if (command === 'status') {
    service.once('beforeResponse', (response) => {
      response.statusCode = Number(args[0]);
      response.body = 'upstream trouble';
    });
  } else if (command === 'garbage') {
    service.once('beforeResponse', (response) => {
      response.body = '<html>not a token</html>';
    });
  } else if (command === 'scope') {
    service.once('beforeResponse', (response) => {
      response.body.scope = args.join(' ');
    });
  } else if (command === 'throttle') {
    service.once('beforeResponse', (response, req) => {
      response.statusCode = 429;
      response.body = { error: 'slow_down' };
      req.res.setHeader('Retry-After', args[0]);
    });
  } else if (command === 'hold') {
    hold = Number(args[0]);
  } else if (command === 'deny') {
    service.once('beforeAuthorizeRedirect', (redirect) => {
      redirect.url.searchParams.delete('code');
      redirect.url.searchParams.set('error', 'access_denied');
    });
  } else if (command === 'expires') {
    expiresIn = Number(args[0]);
  } else if (command === 'revoke-status') {
    revokeFailures = { status: Number(args[0]), count: Number(args[1]) };
  } else if (command === 'refreshes') {
    reply = `ok refreshes ${refreshes}`;
  } else if (command === 'revocations') {
    reply = `ok revocations ${revoked.length} ${revoked.join(' ')}`.trim();
  } else if (command === 'issued') {
    reply = `ok issued ${lastIssued}`;
  }
  console.log(reply);
});
lines.on('close', () => {
  server.close();
  process.exit(0);
});
server.listen(Number(process.env.OAUTH_PROVIDER_PORT ?? 0), '127.0.0.1', () => {
  issuer.url = `http://127.0.0.1:${server.address().port}`;
  console.log(`listening on ${issuer.url}`);
});
