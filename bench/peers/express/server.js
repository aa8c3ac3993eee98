// The article's "Building a Production-Ready SSE Service" server (shared/seed), adapted to the
// ticker-10 workload: the same clients Set, headers, flushHeaders, welcome message and
// close handling, and its broadcast loop (one res.write per event per client). The only
// change: broadcasts come from a feed that ticks 10 symbols once per second each, instead of
// POST /broadcast, and each is an SSE event named after its symbol whose data is the row.
//
// SSE_COMPRESSION=1 (the bench's `express-gzip` peer) adds the `compression` middleware, and,
// as its README requires for Server-Sent Events, calls res.flush() after every res.write:
// without it zlib holds the events back until its buffer fills. Nothing else changes.
//
// Run: PORT=3000 node server.js        (or SSE_COMPRESSION=1 PORT=3000 node server.js)
const express = require('express');
const cors = require('cors');
const { Market, encode, schedule } = require('./workload');

const compress = process.env.SSE_COMPRESSION === '1';
const app = express();
app.use(cors());
if (compress) app.use(require('compression')());

// res.flush() exists only under compression: push what zlib holds out as a gzip block.
const flush = compress ? (res) => res.flush() : () => {};

// Track all connected clients
const clients = new Set();

app.get('/events', (req, res) => {
  res.setHeader('Content-Type', 'text/event-stream');
  res.setHeader('Cache-Control', 'no-cache');
  res.setHeader('Connection', 'keep-alive');
  res.setHeader('X-Accel-Buffering', 'no'); // Disable nginx buffering
  res.flushHeaders();

  const clientId = Date.now();
  const clientData = { id: clientId, res };
  clients.add(clientData);
  console.log(`Client ${clientId} connected. Total: ${clients.size}`);

  res.write(`data: ${JSON.stringify({ type: 'connected', clientId })}\n\n`);
  flush(res);

  req.on('close', () => {
    clients.delete(clientData);
    console.log(`Client ${clientId} disconnected. Total: ${clients.size}`);
  });
});

// Broadcast to all connected clients
function broadcast(message) {
  clients.forEach((client) => {
    client.res.write(message);
    flush(client.res);
  });
}

const market = new Market();
schedule((symbol) => {
  const { seq, row } = market.tick(symbol);
  broadcast(encode(symbol, seq, row));
});

const port = Number(process.env.PORT || 3000);
app.listen(port, '127.0.0.1', () => console.log(`Production SSE server running on ${port}`));
