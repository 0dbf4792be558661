#!/usr/bin/env node
// Mock APNs provider API: HTTP/2 over TLS on loopback, client certificate
// requested and checked against --ca, answers per device token as a rules
// file says, records every connection and request as JSON lines.
//
//   node mock-apns.js --port P --cert server.crt --key server.key --ca push-ca.crt
//        [--log requests.jsonl] [--rules rules.json] [--delay MS]
//        [--max-streams N] [--any-client] [--quiet] [--summary FILE]
//        [--goaway-after N [--goaway-sessions K] [--goaway-reason R]]
//
// --goaway-after N: on each session (the first K with --goaway-sessions)
// the N-th request is answered by a GOAWAY whose last_stream_id is the
// stream before it; that stream and every later one are not processed
// (logged as "refused", never answered), earlier ones are
// answered as usual. --goaway-reason puts {"reason":R} in the GOAWAY (as
// APNs does). --summary writes {"requests","tokens","duplicates",
// "refused","sessions","goaways"} as JSON on SIGTERM (processed requests;
// duplicates = tokens requested more than once); SIGUSR2 writes it now and
// starts counting afresh.
//
// rules.json (re-read when it changes):
//   { "default": RULE,
//     "tokens": { "<hex token>": RULE | [RULE, RULE, ...] } }
//   RULE = { "status": 200|400|403|410|429|500|503, "reason": "...",
//            "timestamp": ms, "delay": ms }
// An array answers the n-th request for that token with the n-th rule; the
// last rule repeats. Requests are checked like APNs does: POST,
// /3/device/<hex>, JSON body <= 4096 bytes, apns-topic equal to the client
// certificate's UID (TopicDisallowed otherwise), a trusted client
// certificate (403 BadCertificate otherwise, unless --any-client).
//
// Log lines: {"event":"session","conn":N,"uid":..,"authorized":..,"fp":..}
//            {"event":"request","conn":N,"stream":S,"active":A,"method":..,
//             "path":..,"token":..,"headers":{..},"body":..,"uid":..,
//             "status":..,"reason":..,"apns_id":..,"t":ms}
'use strict';

const http2 = require('http2');
const fs = require('fs');
const crypto = require('crypto');

const opt = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith('--')) throw new Error('bad argument ' + a);
  const eq = a.indexOf('=');
  if (eq > 0) opt[a.slice(2, eq)] = a.slice(eq + 1);
  else if (['any-client', 'quiet'].includes(a.slice(2))) opt[a.slice(2)] = true;
  else opt[a.slice(2)] = process.argv[++i];
}

const logFd = opt.log ? fs.openSync(opt.log, 'a') : null;
function record(obj) {
  if (logFd !== null) fs.writeSync(logFd, JSON.stringify(obj) + '\n');
}

let rules = { default: { status: 200 }, tokens: {} };
let rulesMtime = 0;
let rulesChecked = 0;
function currentRules() {
  if (!opt.rules) return rules;
  const now = Date.now();
  if (now - rulesChecked < 20) return rules;
  rulesChecked = now;
  try {
    const st = fs.statSync(opt.rules);
    if (st.mtimeMs !== rulesMtime) {
      const r = JSON.parse(fs.readFileSync(opt.rules, 'utf8'));
      rules = { default: r.default || { status: 200 }, tokens: r.tokens || {} };
      rulesMtime = st.mtimeMs;
      seen.clear();
    }
  } catch (e) {
    // missing or half-written file: keep the previous rules
  }
  return rules;
}
const seen = new Map();   // token -> requests so far (for rule arrays)

function uidOf(cert) {
  if (!cert || !cert.subject) return null;
  const s = cert.subject;
  return s.UID || s.userId || s['0.9.2342.19200300.100.1.1'] || null;
}

const server = http2.createSecureServer({
  key: fs.readFileSync(opt.key),
  cert: fs.readFileSync(opt.cert),
  ca: opt.ca ? fs.readFileSync(opt.ca) : undefined,
  requestCert: true,
  rejectUnauthorized: false,
  allowHTTP1: false,
  settings: {
    maxConcurrentStreams: opt['max-streams'] ? Number(opt['max-streams']) : 1000,
  },
});

let nconn = 0;
const summary = { requests: 0, tokens: 0, duplicates: 0, refused: 0, sessions: 0,
                  goaways: 0 };
const perToken = new Map();
const goawayAfter = opt['goaway-after'] ? Number(opt['goaway-after']) : 0;
const goawaySessions = opt['goaway-sessions'] ? Number(opt['goaway-sessions']) : 0;
server.on('session', (session) => {
  const conn = ++nconn;
  summary.sessions++;
  const sock = session.socket;
  const cert = sock.getPeerCertificate ? sock.getPeerCertificate() : null;
  session.mock = { conn, uid: uidOf(cert), authorized: !!sock.authorized, active: 0,
                   ended: 0, goawayLast: undefined };
  record({ event: 'session', conn, uid: session.mock.uid,
           authorized: session.mock.authorized,
           fp: cert && cert.fingerprint256 ? cert.fingerprint256 : null, t: Date.now() });
  session.on('error', (e) => record({ event: 'session-error', conn, error: String(e), t: Date.now() }));
  session.on('goaway', (code) => record({ event: 'goaway-received', conn, code, t: Date.now() }));
  session.on('frameError', (type, code, id) =>
    record({ event: 'frame-error', conn, type, code, stream: id, t: Date.now() }));
  session.on('close', () => record({ event: 'session-close', conn, t: Date.now() }));
});

server.on('stream', (stream, headers) => {
  const m = stream.session.mock;
  m.active++;
  const active = m.active;
  const chunks = [];
  stream.on('data', (c) => chunks.push(c));
  stream.on('error', () => {});
  stream.on('close', () => { m.active--; });
  stream.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const path = headers[':path'] || '';
    const method = headers[':method'];
    const match = /^\/3\/device\/([0-9a-fA-F]+)$/.exec(path);
    const token = match ? match[1] : null;
    if (goawayAfter && m.goawayLast === undefined
        && (!goawaySessions || m.conn <= goawaySessions) && ++m.ended >= goawayAfter) {
      m.goawayLast = stream.id - 2;
      const data = opt['goaway-reason']
        ? Buffer.from(JSON.stringify({ reason: opt['goaway-reason'] })) : undefined;
      stream.session.goaway(http2.constants.NGHTTP2_NO_ERROR, m.goawayLast, data);
      summary.goaways++;
      record({ event: 'goaway-sent', conn: m.conn, last: m.goawayLast, t: Date.now() });
    }
    if (m.goawayLast !== undefined && stream.id > m.goawayLast) {
      summary.refused++;
      record({ event: 'refused', conn: m.conn, stream: stream.id, token, t: Date.now() });
      return;         // the client has closed it (GOAWAY); no answer
    }
    if (token) {
      const n = (perToken.get(token) || 0) + 1;
      perToken.set(token, n);
      if (n === 1) summary.tokens++;
      if (n === 2) summary.duplicates++;
    }
    summary.requests++;
    const r = currentRules();
    let rule = (token && r.tokens[token]) || r.default;
    if (Array.isArray(rule)) {
      const n = seen.get(token) || 0;
      seen.set(token, n + 1);
      rule = rule[Math.min(n, rule.length - 1)];
    }
    let status = rule.status || 200;
    let reason = rule.reason;
    let timestamp = rule.timestamp;
    // what APNs itself would refuse first
    if (!m.authorized && !opt['any-client']) { status = 403; reason = 'BadCertificate'; }
    else if (method !== 'POST') { status = 405; reason = 'MethodNotAllowed'; }
    else if (!token) { status = 404; reason = 'BadPath'; }
    else if (m.uid && headers['apns-topic'] !== m.uid) { status = 400; reason = 'TopicDisallowed'; }
    else if (body.length > 4096) { status = 413; reason = 'PayloadTooLarge'; }
    else {
      try { JSON.parse(body); } catch (e) { status = 400; reason = 'BadPayload'; }
    }
    if (status === 410 && timestamp === undefined) timestamp = Date.now();
    if (status !== 200 && !reason) {
      reason = { 400: 'BadDeviceToken', 403: 'Forbidden', 410: 'Unregistered',
                 429: 'TooManyRequests', 500: 'InternalServerError',
                 503: 'ServiceUnavailable' }[status] || 'Error';
    }
    const hdrs = {};
    for (const k of Object.keys(headers)) if (!k.startsWith(':')) hdrs[k] = headers[k];
    const apnsId = headers['apns-id'] || crypto.randomUUID().toUpperCase();
    record({ event: 'request', conn: m.conn, stream: stream.id, active, method, path,
             token, headers: hdrs, body, uid: m.uid, status, reason, apns_id: apnsId,
             t: Date.now() });
    const reply = () => {
      if (stream.destroyed || stream.closed) return;
      if (status === 200) {
        stream.respond({ ':status': 200, 'apns-id': apnsId }, { endStream: true });
      } else {
        const out = { reason };
        if (status === 410) out.timestamp = timestamp;
        stream.respond({ ':status': status, 'apns-id': apnsId,
                         'content-type': 'application/json' });
        stream.end(JSON.stringify(out));
      }
    };
    const delay = rule.delay !== undefined ? rule.delay : Number(opt.delay || 0);
    if (delay > 0) setTimeout(reply, delay); else reply();
  });
});

server.on('tlsClientError', () => {});
server.listen(Number(opt.port), opt.host || '127.0.0.1', () => {
  if (!opt.quiet) process.stdout.write('listening ' + server.address().port + '\n');
});
process.on('SIGUSR2', () => {
  if (opt.summary) {
    fs.writeFileSync(opt.summary + '.tmp', JSON.stringify(summary) + '\n');
    fs.renameSync(opt.summary + '.tmp', opt.summary);
  }
  for (const k of Object.keys(summary)) summary[k] = 0;
  perToken.clear();
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    if (logFd !== null) fs.fsyncSync(logFd);
    if (opt.summary) fs.writeFileSync(opt.summary, JSON.stringify(summary) + '\n');
    process.exit(0);
  });
}
