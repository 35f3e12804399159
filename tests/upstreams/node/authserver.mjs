// A real OAuth 2.1 / OpenID authorization server for tests: npm oidc-provider on 127.0.0.1.
//
//   PORT=9000 JWKS_FILE=keys.json node tests/upstreams/node/authserver.mjs
//
// JWKS_FILE holds {"keys": [private JWKs]}; the first one signs (restart with a new first key to
// rotate). Resource indicators (RFC 8707) are on: a token requested for a `resource` is a JWT
// (RFC 9068) whose `aud` is that resource. Clients:
//   cc-client / cc-secret   client_credentials, tokens live 10 min
//   cc-short / cc-secret    client_credentials, tokens live 1 s (expiry tests)
//   pkce-client             public, authorization code + PKCE, redirect http://127.0.0.1/callback
// and dynamic registration (how the MCP SDK client registers itself). Every interaction signs in
// as the account "alice" and consents at once, so a test can follow the redirects alone.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(process.env.JWKS_FILE, 'utf8'));
const SCOPES = 'mcp:tools mcp:admin';
const secretClient = (id, extra) => ({
  client_id: id,
  client_secret: 'cc-secret',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...extra,
});

const provider = new Provider(issuer, {
  jwks,
  clients: [
    secretClient('cc-client', { scope: SCOPES }),
    secretClient('cc-short', { scope: SCOPES }),
    {
      client_id: 'pkce-client',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
  ],
  scopes: ['openid', ...SCOPES.split(' ')],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    registration: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: SCOPES,
        audience: resource,
        accessTokenTTL: client.clientId === 'cc-short' ? 1 : 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  clientDefaults: { grant_types: ['authorization_code'], response_types: ['code'] },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  extraTokenClaims: (ctx, token) => ({ groups: token.accountId ? ['engineering'] : ['robots'] }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: 'alice' } });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const { missingOIDCScope, missingResourceScopes } = details.prompt.details;
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  for (const [resource, scopes] of Object.entries(missingResourceScopes ?? {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
http
  .createServer((req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(String(err));
      });
      return;
    }
    callback(req, res);
  })
  .listen(port, '127.0.0.1', () => console.log(`authorization server ${issuer}`));
