// Pushes log lines to a Loki endpoint with the real winston-loki client.
//
// Usage: node winston_push.js '<spec json>'
//   spec: { "url": "http://127.0.0.1:PORT", "json": false, "tenant": "t1" | null,
//           "labels": { "job": "x" },
//           "lines": [ { "message": "...", "ts_ms": 1700000000123,
//                        "labels": { ... } | absent, "meta": { ... } | absent } ] }
//
// All lines go in one batch, sent when the transport closes. Exits 0 once the
// receiver answered 2xx, 1 on any error (the error is printed on stderr).
// NODE_PATH must point at the node_modules holding winston and winston-loki.
'use strict'

const winston = require('winston')
const LokiTransport = require('winston-loki')

async function main () {
  const spec = JSON.parse(process.argv[2])
  const errors = []
  const transport = new LokiTransport({
    host: spec.url,
    json: Boolean(spec.json),
    labels: spec.labels,
    headers: spec.tenant ? { 'X-Scope-OrgID': spec.tenant } : {},
    // One batch, sent by close(); the interval only has to outlast this script.
    batching: true,
    interval: 60,
    replaceTimestamp: false,
    gracefulShutdown: false,
    timeout: 10000,
    // The line is exactly the message: no level prefix, no trailing meta.
    format: winston.format.printf(info => info.message),
    onConnectionError: err => errors.push(err)
  })
  const logger = winston.createLogger({ level: 'info', transports: [transport] })
  for (const l of spec.lines) {
    logger.log({
      level: 'info',
      message: l.message,
      timestamp: l.ts_ms,
      ...(l.labels ? { labels: l.labels } : {}),
      ...(l.meta || {})
    })
  }
  // winston hands entries to the transport asynchronously.
  await new Promise(resolve => setImmediate(resolve))
  await transport.close()
  if (errors.length > 0) {
    for (const e of errors) console.error(String(e && e.stack ? e.stack : e))
    process.exit(1)
  }
  process.exit(0)
}

main().catch(err => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
