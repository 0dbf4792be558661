#!/usr/bin/env node
// Webhook receiver for the mdm-webhookd tests (t/55-webhookd*.t): HTTP/1.1
// on loopback, answers each POST as a rules file says, records every
// request as a JSON line.
//
//   node webhook-receiver.js --port P [--log requests.jsonl]
//        [--rules rules.json] [--brief] [--delay MS]
//
// rules.json (re-read when it changes; its "next" list starts afresh):
//   { "default": MODE, "next": [MODE, MODE, ...] }
// The n-th request after a change gets the n-th MODE of "next", later ones
// "default" ("ok" when absent). MODE:
//   "ok"      200, empty body
//   "500"     500 (any number: that status)
//   "hang"    never answers (the socket stays open)
//   "garbage" a reply that is not HTTP, then the connection is closed
//   "close"   closes the connection without a word
// Log lines: {"t":ms,"mode":..,"headers":{..},"body":".."}; with --brief
// the body is left out and "event_id", "topic", "udid" taken from it.
'use strict';

const http = require('http');
const fs = require('fs');

const args = {};
for (let i = 2; i < process.argv.length; i++) {
    const a = process.argv[i].replace(/^--/, '');
    if (a === 'brief') { args.brief = true; continue; }
    args[a] = process.argv[++i];
}
const port = +args.port;
const logf = args.log ? fs.openSync(args.log, 'a') : null;
const delay = +(args.delay || 0);

let rules = { default: 'ok', next: [] };
let rulesMtime = 0;
let nextIdx = 0;

function mode() {
    if (args.rules) {
        try {
            const st = fs.statSync(args.rules);
            if (st.mtimeMs !== rulesMtime) {
                rulesMtime = st.mtimeMs;
                rules = JSON.parse(fs.readFileSync(args.rules, 'utf8'));
                nextIdx = 0;
            }
        } catch (e) { /* absent or being written: keep the old rules */ }
    }
    const next = rules.next || [];
    if (nextIdx < next.length) return String(next[nextIdx++]);
    return String(rules.default || 'ok');
}

const hangs = [];
const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        const m = mode();
        if (logf) {
            const rec = { t: Date.now(), mode: m, method: req.method,
                          headers: req.headers };
            if (args.brief) {
                try {
                    const j = JSON.parse(body);
                    const inner = j.checkin_event || j.acknowledge_event || {};
                    rec.event_id = j.event_id;
                    rec.topic = j.topic;
                    rec.udid = inner.udid || inner.enrollment_id;
                } catch (e) { rec.bad = true; }
            } else {
                rec.body = body;
            }
            fs.writeSync(logf, JSON.stringify(rec) + '\n');
        }
        const answer = () => {
            if (m === 'ok') {
                res.writeHead(200, { 'Content-Length': 0 });
                res.end();
            } else if (m === 'hang') {
                hangs.push(res);
            } else if (m === 'garbage') {
                req.socket.end('GARBAGE \x00\x01 not http at all\r\n\r\n');
            } else if (m === 'close') {
                req.socket.destroy();
            } else {
                res.writeHead(+m || 500, { 'Content-Length': 5 });
                res.end('oops\n');
            }
        };
        if (delay) setTimeout(answer, delay); else answer();
    });
});
server.keepAliveTimeout = 30000;
server.listen(port, '127.0.0.1', () => {
    process.stdout.write('listening ' + port + '\n');
});
process.on('SIGTERM', () => process.exit(0));
