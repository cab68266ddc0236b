// REST client: tokens, refresh with rotation, and the calls the UI needs.
// The refresh token lives in sessionStorage (one login per tab, survives a reload); the access
// token only in memory. Refreshes are serialised: two concurrent refreshes with the same token
// would look like token theft to the server and revoke the session.

const REFRESH_KEY = "callsignal.refresh_token";

export class ApiError extends Error {
  /** `retryAfter`: seconds from the `Retry-After` header (429, 503), or null. */
  constructor(status, code, message, retryAfter = null) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** `Retry-After` in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP date), or null. */
function retryAfter(resp) {
  const v = resp.headers.get("Retry-After");
  if (!v) return null;
  if (/^\d+$/.test(v.trim())) return Number(v.trim());
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export class Api {
  constructor() {
    this.access = null;
    this.expiresAt = 0;
    this.user = null;
    this.sessionId = null;
    this.refreshing = null;
    this.timer = null;
  }

  get loggedIn() {
    return this.access !== null;
  }

  async #fetch(method, path, body, token) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (resp.status === 204) return null;
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = data.error || {};
      throw new ApiError(resp.status, err.code || "http_error", err.message || resp.statusText, retryAfter(resp));
    }
    return data;
  }

  async request(method, path, body) {
    await this.fresh();
    try {
      return await this.#fetch(method, path, body, this.access);
    } catch (e) {
      if (e.status !== 401 || !this.hasRefresh()) throw e;
      await this.refresh();
      return this.#fetch(method, path, body, this.access);
    }
  }

  hasRefresh() {
    return sessionStorage.getItem(REFRESH_KEY) !== null;
  }

  #accept(data) {
    this.access = data.access_token;
    this.expiresAt = Date.now() + data.expires_in * 1000;
    this.user = data.user;
    this.sessionId = data.session_id;
    sessionStorage.setItem(REFRESH_KEY, data.refresh_token);
    clearTimeout(this.timer);
    // Renew a minute before expiry (or halfway for very short lifetimes).
    const lead = Math.min(60_000, (data.expires_in * 1000) / 2);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), data.expires_in * 1000 - lead);
  }

  async register(username, password) {
    return this.#fetch("POST", "/api/auth/register", { username, password });
  }

  async login(username, password) {
    this.#accept(await this.#fetch("POST", "/api/auth/login", { username, password }));
  }

  /** Exchanges the stored refresh token for a new pair; one at a time. */
  refresh() {
    if (!this.refreshing) {
      const token = sessionStorage.getItem(REFRESH_KEY);
      this.refreshing = (async () => {
        try {
          if (!token) throw new ApiError(401, "invalid_refresh_token", "not logged in");
          this.#accept(await this.#fetch("POST", "/api/auth/refresh", { refresh_token: token }));
        } catch (e) {
          if (e.status === 401) this.forget();
          throw e;
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
  }

  /** Makes sure the access token has at least 30 s left. */
  async fresh() {
    if (this.access && Date.now() < this.expiresAt - 30_000) return;
    if (this.hasRefresh()) await this.refresh();
  }

  async logout() {
    try {
      if (this.access) await this.#fetch("POST", "/api/auth/logout", undefined, this.access);
    } finally {
      this.forget();
    }
  }

  forget() {
    clearTimeout(this.timer);
    this.access = null;
    this.user = null;
    this.sessionId = null;
    sessionStorage.removeItem(REFRESH_KEY);
  }

  calls(limit = 20) {
    return this.request("GET", `/api/calls?limit=${limit}`);
  }

  call(id) {
    return this.request("GET", `/api/calls/${encodeURIComponent(id)}`);
  }

  sessions() {
    return this.request("GET", "/api/sessions");
  }

  /** Signs out every other device of this account; resolves to how many. */
  async revokeOthers() {
    const { revoked } = await this.request("POST", "/api/sessions/revoke-others");
    return revoked;
  }

  revokeSession(id) {
    return this.request("DELETE", `/api/sessions/${encodeURIComponent(id)}`);
  }
}
