// POST JSON as text/plain (a CORS "simple request": no preflight) with a hard
// timeout. Resolves with the Response (any status), rejects on network error
// or timeout.
export const post = (url, body, ms) => {
  const c = new AbortController();
  setTimeout(() => c.abort(), ms);
  return fetch(url, { method: 'POST', body: JSON.stringify(body), keepalive: true, credentials: 'omit', signal: c.signal });
};
