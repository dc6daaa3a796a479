// The gaveurs web page: sign-in, then a gaveur's lots, live. It holds no data of its own:
// everything comes from the pipeline's APIs and the gaveur's WebSocket channel, with the
// signed-in user's token, so it sees exactly what any client with that token would.
"use strict";

const TOKEN_KEY = "gaveurs.token";
const $ = (selector, root = document) => root.querySelector(selector);
const app = $("#app");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

function claimsOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(payload))));
  } catch (_) {
    return null;
  }
}

function roles(claims) {
  return (claims.realm_access && claims.realm_access.roles) || [];
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.authorization = `Bearer ${token}`;
  return fetch(path, Object.assign({}, options, { headers }));
}

// ---- Sign-in ----------------------------------------------------------------------------
//
// The authorization-code flow with PKCE against the realm (Keycloak, or in dev mode the
// pipeline's own issuer, which answers the same endpoints), and in dev mode also a picker of
// the demo users. Tokens live in this tab's session storage only.

const SESSION_KEY = "gaveurs.session";

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

async function signinConfig() {
  const answer = await fetch("/auth/config");
  return answer.ok ? answer.json() : { mode: "none" };
}

async function signIn() {
  $("#who").textContent = "";
  $("#signout").hidden = true;
  const config = await signinConfig();
  const parts = [el("h2", {}, "Connexion")];
  if (config.mode !== "none") {
    parts.push(el("p", {}, el("button", {
      type: "button", "data-signin": "realm", onclick: () => startCodeFlow(config),
    }, config.mode === "dev" ? "Se connecter (émetteur de développement)" : "Se connecter avec Keycloak")));
  }
  if (config.picker) {
    const answer = await fetch("/auth/dev/users");
    if (answer.ok) {
      const list = el("ul", { class: "users", "aria-label": "Utilisateurs de démonstration" });
      for (const user of (await answer.json()).users) {
        list.append(el("li", {}, el("button", {
          type: "button",
          "data-user": user.email,
          onclick: () => devToken(user.email),
        }, `${user.username} — ${user.roles.join(", ")}${user.site ? ` (site ${user.site})` : ""}`)));
      }
      parts.push(
        el("p", { class: "notice" },
          "Mode développement : cette page délivre le jeton d'un utilisateur de démonstration. ",
          "En production, la connexion passe par Keycloak."),
        list);
    }
  }
  if (config.mode === "none") {
    parts.push(el("p", {}, "Aucune connexion n'est proposée par ce serveur."));
  }
  app.replaceChildren(...parts);
  $("button", app)?.focus();
}

async function startCodeFlow(config) {
  const verifier = randomString();
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = randomString();
  sessionStorage.setItem("gaveurs.pkce", JSON.stringify({ verifier, state, issuer: config.issuer }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: `${location.origin}/`,
    scope: "openid",
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  location.assign(`${config.issuer}/protocol/openid-connect/auth?${params}`);
}

// Back from the realm with ?code=…&state=…: trade the code for tokens.
async function finishCodeFlow(params) {
  const pending = JSON.parse(sessionStorage.getItem("gaveurs.pkce") || "null");
  sessionStorage.removeItem("gaveurs.pkce");
  history.replaceState(null, "", location.pathname);
  if (!pending || pending.state !== params.get("state")) {
    banner("La connexion n'a pas abouti (état inattendu) : recommencez.");
    return false;
  }
  const answer = await fetch(`${pending.issuer}/protocol/openid-connect/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      code_verifier: pending.verifier,
      client_id: "gaveurs-web",
      redirect_uri: `${location.origin}/`,
    }),
  });
  if (!answer.ok) {
    banner(`La connexion a été refusée (${answer.status}).`);
    return false;
  }
  keepTokens(await answer.json(), pending.issuer);
  return true;
}

function keepTokens(tokens, issuer) {
  sessionStorage.setItem(TOKEN_KEY, tokens.access_token);
  if (tokens.refresh_token) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ refresh: tokens.refresh_token, issuer }));
  }
}

// Renews the access token before it expires (at 70 % of its life) and hands the new one to
// the open channel, which would otherwise close at the old one's expiry.
let renewal = null;
function scheduleRenewal(claims) {
  clearTimeout(renewal);
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  if (!session || !claims.exp) return;
  const life = claims.exp * 1000 - Date.now();
  renewal = setTimeout(async () => {
    const answer = await fetch(`${session.issuer}/protocol/openid-connect/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: session.refresh, client_id: "gaveurs-web" }),
    });
    if (!answer.ok) {
      banner("Session expirée : reconnectez-vous.");
      return;
    }
    keepTokens(await answer.json(), session.issuer);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (live.socket && live.socket.readyState === WebSocket.OPEN) {
      live.socket.send(JSON.stringify({ type: "auth", token }));
    }
    document.body.dataset.renewals = String(Number(document.body.dataset.renewals || 0) + 1);
    scheduleRenewal(claimsOf(token));
  }, Math.max(1000, life * 0.7));
}

async function devToken(email) {
  const answer = await fetch("/auth/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email }),
  });
  if (answer.status !== 200) {
    app.append(el("p", { role: "alert" }, `Connexion refusée (${answer.status}).`));
    return;
  }
  const body = await answer.json();
  sessionStorage.setItem(TOKEN_KEY, body.access_token);
  start();
}

async function signOut() {
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  clearTimeout(renewal);
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(SESSION_KEY);
  if (live.socket) live.close();
  lots.clear();
  if (session) {
    await fetch(`${session.issuer}/protocol/openid-connect/logout`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ refresh_token: session.refresh, client_id: "gaveurs-web" }),
    }).catch(() => {});
  }
  signIn();
}

// ---- A gaveur's lots, live ----------------------------------------------------------------

const live = {
  socket: null,
  lastSeq: 0,
  retry: 0,
  closing: false,
  close() {
    this.closing = true;
    this.socket.close();
    this.socket = null;
  },
};

// code_lot → { meals: Map("jour|moment" → meal), kpi, alerts: Map(alert_id → alert), anomalies }
const lots = new Map();

function lot(code) {
  if (!lots.has(code)) {
    lots.set(code, { meals: new Map(), kpi: null, alerts: new Map(), anomalies: [], chart: null });
  }
  return lots.get(code);
}

function banner(text) {
  const node = $("#banner");
  node.textContent = text || "";
  node.hidden = !text;
}

// What the channel no longer keeps (it starts empty after a restart): the gaveur's lots and
// their meals as published. Meals are keyed by day and moment, so one the channel also
// brings is shown once.
async function loadHistory(gaveurId) {
  const answer = await api(`/api/v1/lots?gaveur_id=${gaveurId}`);
  if (!answer.ok) return;
  for (const row of (await answer.json()).lots) {
    if (onlyLot && row.code_lot !== onlyLot) continue;
    const state = lot(row.code_lot);
    state.kpi = Object.assign({}, row, state.kpi);
    if (row.termine) {
      state.outcome = state.outcome || row;
      continue;
    }
    const meals = await api(`/api/v1/lots/${encodeURIComponent(row.code_lot)}/meals`);
    if (!meals.ok) continue;
    for (const meal of (await meals.json()).meals) {
      const key = `${meal.jour}|${meal.moment}`;
      if (!state.meals.has(key)) state.meals.set(key, meal);
    }
  }
  document.body.dataset.history = "loaded";
  scheduleRender();
}

function connect(gaveurId) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws/gaveur/${gaveurId}?token=${encodeURIComponent(token)}&since=${live.lastSeq}`;
  const socket = new WebSocket(url);
  live.socket = socket;
  live.closing = false;
  socket.onopen = () => {
    live.retry = 0;
    banner("");
    document.body.dataset.live = "open";
  };
  socket.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    // Frames already shown (a resumed channel) are skipped: each meal is on screen once.
    if (typeof message.seq === "number") {
      if (message.seq <= live.lastSeq) return;
      live.lastSeq = message.seq;
    }
    receive(message);
  };
  socket.onclose = (event) => reconnectLater(socket, event, () => connect(gaveurId));
}

// A channel closed: refused (an expired or forbidden token) says so and stays closed; any
// other close says so and tries again, waiting longer each time (at most 10 s).
function reconnectLater(socket, event, again) {
  document.body.dataset.live = "closed";
  if (live.closing || live.socket !== socket) return;
  if (event.code === 4401 || event.code === 4403) {
    banner("Session expirée ou accès refusé : reconnectez-vous.");
    return;
  }
  banner("Connexion perdue — reconnexion en cours…");
  setTimeout(again, Math.min(10000, 500 * 2 ** live.retry++));
}

function receive(message) {
  const data = message.data || {};
  switch (message.type) {
    case "gavage": {
      lot(data.code_lot).meals.set(`${data.jour}|${data.moment}`, data);
      break;
    }
    case "kpi": {
      if (data.code_lot) lot(data.code_lot).kpi = Object.assign({}, lot(data.code_lot).kpi, data);
      break;
    }
    case "alerte": {
      if (!data.code_lot) break;
      const alerts = lot(data.code_lot).alerts;
      if (data.transition === "cleared" || data.state === "cleared") alerts.delete(data.alert_id);
      else alerts.set(data.alert_id, data);
      break;
    }
    case "notification": {
      if (data.kind === "lot_outcome" && data.code_lot) {
        lot(data.code_lot).outcome = data;
        break;
      }
      // Frames the channel no longer kept (a long cut, or a restart): say so, once.
      if (data.kind === "replay_gap") {
        document.body.dataset.gap = String(data.oldest_available);
        const note = $(".notice", app);
        if (note) note.textContent = "Le direct a repris ; les mises à jour d'une longue coupure ont pu manquer : rechargez pour tout revoir.";
      }
      return;
    }
    case "anomalie": {
      if (data.code_lot) lot(data.code_lot).anomalies.push(data);
      break;
    }
    default:
      return;
  }
  scheduleRender();
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
  });
}

function number(value, digits = 0) {
  return typeof value === "number" ? value.toLocaleString("fr-FR", { maximumFractionDigits: digits }) : "—";
}

// A superviseur opening one lot from /sites watches its gaveur's channel for that lot only.
let onlyLot = null;

function render() {
  let list = $(".lots", app);
  if (!list) {
    list = el("div", { class: "lots" });
    app.replaceChildren(el("h2", {}, "Mes lots en cours"), list);
  }
  let finished = $(".finished", app);
  if (!finished) {
    finished = el("ul", { class: "finished", "aria-label": "Lots terminés" });
    app.append(el("h2", {}, "Lots terminés"), finished);
  }
  for (const [code, state] of [...lots.entries()].sort()) {
    if (onlyLot && code !== onlyLot) continue;
    if (state.outcome) {
      list.querySelector(`[data-lot="${CSS.escape(code)}"]`)?.remove();
      renderFinished(finished, code, state);
      continue;
    }
    let card = list.querySelector(`[data-lot="${CSS.escape(code)}"]`);
    if (!card) {
      card = el("section", { class: "lot", "data-lot": code, "aria-label": `Lot ${code}` },
        el("h3", {}, `Lot ${code}`),
        el("ul", { class: "kpis" }),
        el("div", { class: "chart", role: "img", "aria-label": `Doses du lot ${code}` }),
        el("p", { class: "meals" }),
        el("ul", { class: "alerts", "aria-label": "Alertes" }),
        el("div", { class: "certificate" },
          el("button", { type: "button", onclick: () => certificate(card, code) }, "Certificat du lot")));
      list.append(card);
    }
    renderLot(card, code, state);
  }
}

function renderLot(card, code, state) {
  const meals = [...state.meals.values()].sort((a, b) =>
    a.jour - b.jour || (a.moment === b.moment ? 0 : a.moment === "matin" ? -1 : 1));
  const kpi = state.kpi || {};
  $(".kpis", card).replaceChildren(
    el("li", {}, "Maïs cumulé : ", el("b", {}, `${number(kpi.mais_cumule_g ?? kpi.mais_total_g)} g`)),
    el("li", {}, "Écart : ", el("b", {}, `${number(kpi.ecart_pct ?? kpi.ecart_moyen_pct, 1)} %`)),
    el("li", {}, "Mortalité : ", el("b", {}, `${number(kpi.taux_mortalite ?? kpi.mortalite_moyenne_pct, 2)} %`)),
    kpi.itm_pred !== undefined && kpi.itm_pred !== null
      ? el("li", {}, "ITM prévu : ", el("b", {}, number(kpi.itm_pred, 2))) : null,
  );
  const meals_p = $(".meals", card);
  meals_p.dataset.count = String(meals.length);
  const last = meals[meals.length - 1];
  meals_p.textContent = `${meals.length} repas${last ? ` — dernier : jour ${last.jour}, ${last.moment}, ${number(last.dose_reelle, 1)} g sur ${number(last.dose_theorique, 1)} g` : ""}`;
  const x = meals.map((m) => m.jour + (m.moment === "soir" ? 0.5 : 0));
  const data = [x, meals.map((m) => m.dose_theorique), meals.map((m) => m.dose_reelle)];
  const holder = $(".chart", card);
  const width = Math.max(240, holder.clientWidth || 300);
  if (!state.chart && typeof uPlot === "function") {
    state.chart = new uPlot({
      width, height: 180,
      scales: { x: { time: false } },
      axes: [{ label: "jour" }, { label: "g" }],
      series: [
        { label: "jour" },
        { label: "théorique", stroke: "#5c5c57", dash: [6, 4], width: 2 },
        { label: "réelle", stroke: "#2a5db0", width: 2, points: { show: true } },
      ],
    }, data, holder);
  } else if (state.chart) {
    state.chart.setData(data);
  }
  const alerts = [...state.alerts.values()];
  $(".alerts", card).replaceChildren(...alerts.map((alert) => renderAlert(alert)));
}

// A finished lot: its outcome and its ITM (maize per duck over the liver weight), as the
// lot's KPIs give it once the outcome is in.
function renderFinished(list, code, state) {
  let item = list.querySelector(`[data-finished="${CSS.escape(code)}"]`);
  if (!item) {
    item = el("li", { "data-finished": code });
    list.append(item);
  }
  const kpi = state.kpi || {};
  const outcome = state.outcome;
  item.replaceChildren(
    el("b", {}, `Lot ${code}`),
    ` — fin ${outcome.date_fin || "?"}, ${number(outcome.nb_canards_accroches)} canards accrochés sur ${number(outcome.nb_canards_mis_en_gavage)}, ITM `,
    el("b", { "data-itm": kpi.itm ?? "" }, number(kpi.itm, 2)));
}

function renderAlert(alert) {
  const acknowledged = alert.state === "acknowledged";
  return el("li", { class: `alert ${alert.severity}`, "data-alert": alert.alert_id, "data-state": alert.state },
    el("span", { class: "severity" }, alert.severity === "critical" ? "Critique" : alert.severity === "warning" ? "Alerte" : "Info"),
    " ", alert.message || alert.rule, " ",
    acknowledged
      ? el("span", { class: "acked" }, `(vue par ${alert.acknowledged_by || "quelqu'un"})`)
      : el("button", { type: "button", onclick: () => acknowledge(alert.alert_id) }, "Acquitter"));
}

// The QR encoder is fetched the first time a certificate is shown, not with the page.
function loadScript(src) {
  if (document.querySelector(`script[src="${src}"]`)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    document.head.append(el("script", { src }));
    const script = document.querySelector(`script[src="${src}"]`);
    script.onload = resolve;
    script.onerror = () => reject(new Error(`${src} did not load`));
  });
}

// The lot's ledger certificate (GET /api/v1/ledger/lots/{code}) as a QR code of its short
// URL, which anyone can check against the certificate offline.
async function certificate(card, code) {
  const holder = $(".certificate", card);
  const answer = await api(`/api/v1/ledger/lots/${encodeURIComponent(code)}`);
  $(".qr", holder)?.remove();
  if (answer.status === 404) {
    holder.append(el("p", { class: "qr" }, "Le registre n'a pas encore d'entrée pour ce lot."));
    return;
  }
  if (!answer.ok) {
    holder.append(el("p", { class: "qr", role: "alert" }, `Certificat indisponible (${answer.status}).`));
    return;
  }
  const document_ = await answer.json();
  await loadScript("/assets/vendor/qrcode.js");
  const qr = qrcode(0, "M");
  qr.addData(document_.url);
  qr.make();
  holder.append(el("figure", { class: "qr", "data-url": document_.url },
    el("img", { src: qr.createDataURL(3, 2), alt: `QR code du certificat du lot ${code}` }),
    el("figcaption", {}, `${document_.entries.length} entrées signées, chaîne ${document_.chain} jusqu'à l'entrée ${document_.head.seq}`)));
}

async function acknowledge(alertId) {
  const answer = await api(`/api/v1/alerts/${encodeURIComponent(alertId)}/ack`, { method: "POST" });
  if (!answer.ok) banner(`L'alerte n'a pas pu être acquittée (${answer.status}).`);
}

// ---- Start ---------------------------------------------------------------------------------

function start() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const claims = token && claimsOf(token);
  if (!claims || (claims.exp && claims.exp * 1000 < Date.now())) {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn();
    return;
  }
  $("#who").textContent = claims.preferred_username || claims.email || "";
  $("#signout").hidden = false;
  scheduleRenewal(claims);
  const params = new URLSearchParams(location.search);
  if (typeof claims.gaveur_id === "number" && location.pathname !== "/sites") {
    app.replaceChildren(el("h2", {}, "Mes lots en cours"), el("div", { class: "lots" }),
      el("p", { class: "notice" }, "Les repas s'affichent dès qu'ils arrivent."));
    connect(claims.gaveur_id);
    loadHistory(claims.gaveur_id);
    return;
  }
  if (params.has("gaveur") && params.has("lot")) {
    onlyLot = params.get("lot");
    app.replaceChildren(el("h2", {}, `Lot ${onlyLot}`), el("div", { class: "lots" }),
      el("p", {}, el("a", { href: "/sites" }, "← Vue des sites")));
    live.lastSeq = 0;
    connect(Number(params.get("gaveur")));
    loadHistory(Number(params.get("gaveur")));
    return;
  }
  sitesPage(claims);
}

// ---- /sites: every site live, for superviseurs and admins (a SQAL technician: the stations
// of their site) --------------------------------------------------------------------------

const sites = {
  // site → { lots_actifs, ecart_abs_moyen_pct, mortalite_moyenne_pct, grades: {grade: n} }
  published: new Map(),
  // site → records received live since the page opened
  meals: new Map(),
  stations: new Map(),
  alerts: new Map(),
};

async function sql(query) {
  const answer = await api("/api/v1/query", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sql: query }),
  });
  if (!answer.ok) return null;
  const body = await answer.json();
  return Array.isArray(body) ? body : body.rows || [];
}

// The published KPIs of each site (lot_kpis and sqal_samples, as of the last roll).
async function refreshPublished() {
  const lotsBySite = await sql(`
    WITH latest AS (
      SELECT site, code_lot, termine, ecart_moyen_pct, taux_mortalite,
             row_number() OVER (PARTITION BY code_lot ORDER BY _computed_at DESC) AS n
      FROM lot_kpis)
    SELECT site, sum(CASE WHEN termine THEN 0 ELSE 1 END) AS lots_actifs,
           avg(abs(ecart_moyen_pct)) AS ecart_abs_moyen_pct,
           avg(taux_mortalite) AS mortalite_moyenne_pct
    FROM latest WHERE n = 1 GROUP BY site ORDER BY site`);
  const grades = await sql("SELECT site_code AS site, grade, count(*) AS n FROM sqal_samples GROUP BY site_code, grade");
  const published = new Map();
  for (const row of lotsBySite || []) published.set(row.site, Object.assign({ grades: {} }, row));
  for (const row of grades || []) {
    if (!published.has(row.site)) published.set(row.site, { site: row.site, grades: {} });
    published.get(row.site).grades[row.grade] = row.n;
  }
  sites.published = published;
  renderSites();
}

async function sitesPage(claims) {
  const everything = roles(claims).includes("superviseur") || roles(claims).includes("admin");
  if (location.pathname !== "/sites") history.replaceState(null, "", "/sites");
  app.replaceChildren(...[
    el("h2", {}, "Vue des sites"),
    el("table", { class: "sites", "aria-label": "Indicateurs par site", hidden: everything ? null : "" }),
    el("h3", {}, "Alertes ouvertes"),
    el("div", { class: "filters" },
      el("label", {}, "Site ", el("select", { id: "alert-site" }, el("option", { value: "" }, "tous"))),
      el("label", {}, " Gravité ", el("select", { id: "alert-severity" },
        el("option", { value: "" }, "toutes"), el("option", { value: "critical" }, "critique"),
        el("option", { value: "warning" }, "alerte"), el("option", { value: "info" }, "info")))),
    el("ul", { class: "alerts", id: "site-alerts", "aria-label": "Alertes ouvertes" }),
    everything ? el("form", { class: "search", id: "lot-search" },
      el("label", { for: "lot-code" }, "Chercher un lot "),
      el("input", { id: "lot-code", name: "lot", autocomplete: "off", placeholder: "LL2612301" }),
      el("button", { type: "submit" }, "Ouvrir"),
      el("p", { id: "lot-found", "aria-live": "polite" })) : null,
    el("h3", {}, "Stations SQAL"),
    el("ul", { class: "stations", id: "stations" }),
  ].filter(Boolean));
  for (const id of ["alert-site", "alert-severity"]) $(`#${id}`).addEventListener("change", renderSites);
  $("#lot-search")?.addEventListener("submit", (event) => {
    event.preventDefault();
    searchLot($("#lot-code").value.trim());
  });
  const answer = await api("/api/v1/alerts?state=active");
  if (answer.ok) {
    const body = await answer.json();
    for (const alert of Array.isArray(body) ? body : body.alerts || []) sites.alerts.set(alert.alert_id, alert);
  }
  if (everything) {
    await refreshPublished();
    setInterval(refreshPublished, 15000);
  }
  connectRealtime();
  renderSites();
}

async function searchLot(code) {
  const found = $("#lot-found");
  if (!code) return;
  const answer = await api(`/api/v1/lots/${encodeURIComponent(code)}`);
  if (!answer.ok) {
    found.replaceChildren(answer.status === 404 ? `Lot ${code} inconnu.` : `Recherche refusée (${answer.status}).`);
    return;
  }
  const view = await answer.json();
  found.replaceChildren(
    `Lot ${view.code_lot}, gaveur ${view.gaveur_id ?? "?"}, site ${view.site ?? "?"} — `,
    el("a", { href: `/?gaveur=${view.gaveur_id}&lot=${encodeURIComponent(view.code_lot)}`, "data-open-lot": view.code_lot }, "ouvrir la page du lot"));
}

function connectRealtime() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/realtime/?token=${encodeURIComponent(token)}`);
  live.socket = socket;
  live.closing = false;
  socket.onopen = () => { banner(""); live.retry = 0; document.body.dataset.live = "open"; };
  socket.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    const data = message.data || message;
    if (message.type === "gavage_realtime") {
      sites.meals.set(data.site, (sites.meals.get(data.site) || 0) + 1);
    } else if (message.type === "sensor_update") {
      sites.stations.set(data.device_id, data);
    } else if (message.type === "alert") {
      if (data.transition === "cleared" || data.state === "cleared") sites.alerts.delete(data.alert_id);
      else sites.alerts.set(data.alert_id, data);
    } else {
      return;
    }
    scheduleSites();
  };
  socket.onclose = (event) => reconnectLater(socket, event, connectRealtime);
}

let sitesPending = false;
function scheduleSites() {
  if (sitesPending) return;
  sitesPending = true;
  requestAnimationFrame(() => { sitesPending = false; renderSites(); });
}

function renderSites() {
  const table = $("table.sites", app);
  if (!table) return;
  const names = new Set([...sites.published.keys(), ...sites.meals.keys()]);
  const grades = ["A+", "A", "B", "C", "REJECT"];
  table.replaceChildren(
    el("thead", {}, el("tr", {},
      ...["Site", "Lots actifs", "|Écart| moyen", "Mortalité moyenne", "Repas reçus en direct", "Grades SQAL"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...[...names].sort().map((site) => {
      const p = sites.published.get(site) || { grades: {} };
      return el("tr", { "data-site": site },
        el("th", { scope: "row" }, site),
        el("td", { "data-kpi": "lots_actifs" }, number(p.lots_actifs)),
        el("td", {}, `${number(p.ecart_abs_moyen_pct, 1)} %`),
        el("td", {}, `${number(p.mortalite_moyenne_pct, 2)} %`),
        el("td", { "data-kpi": "live_meals" }, number(sites.meals.get(site) || 0)),
        el("td", {}, grades.filter((g) => p.grades[g]).map((g) => `${g}: ${p.grades[g]}`).join(", ") || "—"));
    })));
  const siteSelect = $("#alert-site");
  const known = new Set([...names, ...[...sites.alerts.values()].map((a) => a.site).filter(Boolean)]);
  for (const site of [...known].sort()) {
    if (![...siteSelect.options].some((o) => o.value === site)) siteSelect.append(el("option", { value: site }, site));
  }
  const wantedSite = siteSelect.value;
  const wantedSeverity = $("#alert-severity").value;
  const shown = [...sites.alerts.values()]
    .filter((a) => (!wantedSite || a.site === wantedSite) && (!wantedSeverity || a.severity === wantedSeverity))
    .sort((a, b) => String(b.opened_at).localeCompare(String(a.opened_at)));
  $("#site-alerts").replaceChildren(...shown.map((alert) => {
    const item = renderAlert(alert);
    item.prepend(el("span", { class: "where" }, `${alert.site || "?"} · ${alert.code_lot || alert.device_id || ""} `));
    return item;
  }));
  $("#stations").replaceChildren(...[...sites.stations.values()].sort((a, b) => a.device_id.localeCompare(b.device_id)).map((s) =>
    el("li", { "data-station": s.device_id }, `${s.device_id} (${s.site_code || s.site || "?"}) : grade ${s.grade ?? s.fusion_grade ?? "?"}, score ${number(s.final_score ?? s.fusion_score, 2)}`)));
}

$("#signout").addEventListener("click", signOut);
(async () => {
  const params = new URLSearchParams(location.search);
  if (params.has("code")) await finishCodeFlow(params);
  start();
})();
