// A real, certified OpenID provider (npm's oidc-provider) for the integration
// tests: `node provider.mjs <settings.json>`. It listens on 127.0.0.1 (port 0:
// any), prints `{"issuer": …}` once it serves, and signs in the accounts of
// the settings file — re-read at every lookup, so a test changes a person's
// groups by rewriting it. Its sign-in page is one form (`login`), consent is
// implied, and it stops when its standard input closes (the test ended).
//
// settings.json: {"clients": [{client_id, client_secret, redirect_uris}],
//                 "accounts": {"<id>": {"username", "groups": [...]}}}

import { readFileSync } from "node:fs";
import http from "node:http";
import Provider from "oidc-provider";

const settingsPath = process.argv[2];
const settings = () => JSON.parse(readFileSync(settingsPath, "utf8"));

const server = http.createServer();
await new Promise((listening) => server.listen(0, "127.0.0.1", listening));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: settings().clients.map((client) => ({
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
    ...client,
  })),
  scopes: ["openid", "profile", "groups"],
  claims: { openid: ["sub"], profile: ["preferred_username", "name"], groups: ["groups"] },
  // The scopes' claims in the ID token, as Forgejo puts them.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ["linkops-test-provider"] },
  async findAccount(ctx, id) {
    const account = settings().accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: account.username, name: account.username, groups: account.groups };
      },
    };
  },
  // First-party: consent is implied for the scopes asked.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});

server.on("clientError", (error, socket) => {
  console.error(`a request the provider could not read: ${error.code} ${error.message}`);
  socket.destroy();
});
provider.on("server_error", (ctx, error) => console.error(`provider error: ${error.stack}`));
provider.on("grant.error", (ctx, error) => console.error(`grant error: ${error.message} ${error.error_description ?? ""}`));

const callback = provider.callback();
server.on("request", async (req, res) => {
  const page = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  if (!page) return callback(req, res);
  try {
    if (req.method === "POST" && page[2]) {
      let body = "";
      for await (const chunk of req) body += chunk;
      const accountId = new URLSearchParams(body).get("login");
      const result = settings().accounts[accountId]
        ? { login: { accountId } }
        : { error: "access_denied", error_description: `no account ${accountId}` };
      return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    }
    const details = await provider.interactionDetails(req, res);
    res.setHeader("content-type", "text/html; charset=utf-8");
    res.end(`<!doctype html><title>Sign in</title><form method="post" action="/interaction/${details.uid}/login"><input name="login"><button>Sign in</button></form>`);
  } catch (error) {
    res.statusCode = 400;
    res.end(String(error));
  }
});

console.log(JSON.stringify({ issuer }));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
