// A real OAuth 2.0 authorization server on loopback for the tests
// (oauth2-mock-server: authorization code with PKCE, refresh tokens,
// RFC 7009 revocation). Prints `listening on <issuer URL>` and then obeys
// one command per stdin line, each applying to the next token response:
//   error <code>        answer 400 {"error": <code>}
//   status <n>          answer HTTP <n> with a non-JSON body
//   garbage             answer 200 with a body that is not JSON
//   scope <scopes…>     grant only these scopes
//   expires <seconds>   access tokens live this long
//   deny                the next authorization redirects with error=access_denied
//   refreshes           answers `ok refreshes <n>`: refresh-token grants so far
// Exits when stdin closes (the test that started it is gone). Listens on
// OAUTH_PROVIDER_PORT when set (ops/oauth-demo), else on any free port.
import { OAuth2Server } from 'oauth2-mock-server';
import readline from 'node:readline';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
await server.start(Number(process.env.OAUTH_PROVIDER_PORT ?? 0), '127.0.0.1');
let expiresIn = 3600;
let refreshes = 0;

server.service.on('beforeResponse', (response, req) => {
  if (req.body && req.body.grant_type === 'refresh_token') {
    refreshes += 1;
  }
  if (response.body && typeof response.body === 'object' && response.body.access_token) {
    response.body.expires_in = expiresIn;
  }
});

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === 'error') {
    server.service.once('beforeResponse', (response) => {
      response.statusCode = 400;
      response.body = { error: args[0] };
    });
  } else if (command === 'status') {
    server.service.once('beforeResponse', (response) => {
      response.statusCode = Number(args[0]);
      response.body = 'upstream trouble';
    });
  } else if (command === 'garbage') {
    server.service.once('beforeResponse', (response) => {
      response.body = '<html>not a token</html>';
    });
  } else if (command === 'scope') {
    server.service.once('beforeResponse', (response) => {
      response.body.scope = args.join(' ');
    });
  } else if (command === 'deny') {
    server.service.once('beforeAuthorizeRedirect', (redirect) => {
      redirect.url.searchParams.delete('code');
      redirect.url.searchParams.set('error', 'access_denied');
    });
  } else if (command === 'expires') {
    expiresIn = Number(args[0]);
  }
  console.log(command === 'refreshes' ? `ok refreshes ${refreshes}` : `ok ${command}`);
});
lines.on('close', async () => {
  await server.stop();
  process.exit(0);
});
console.log(`listening on http://127.0.0.1:${server.address().port}`);
