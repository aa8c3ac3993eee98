// The ticker-10 workload (../workload.json), as ../workload.py does it for the Python peers:
// same companies, row markup and schedule (symbol i ticks at i/10 s into every second).
const fs = require('fs');
const path = require('path');

const WORKLOAD = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'workload.json'), 'utf8'));
const ROW = WORKLOAD.row.join('\n');
const ARROWS = { up: ['▲', 'up'], down: ['▼', 'down'], flat: ['·', 'unchanged'] };
const fmt = (x) => x.toFixed(2);
const signed = (x) => (x >= 0 ? '+' : '') + x.toFixed(2);

function gauss() {
  let u = 0;
  while (u === 0) u = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

class Market {
  constructor() {
    this.seq = 0;
    this.state = {};
    for (const c of WORKLOAD.companies) {
      const p = c.price;
      this.state[c.symbol] = { name: c.name, open: p, last: p, high: p, low: p, volume: 0 };
    }
  }

  tick(symbol) {
    const s = this.state[symbol];
    const previous = s.last;
    s.last = Math.max(0.01, Math.round(previous * (1 + 0.002 * gauss()) * 100) / 100);
    s.high = Math.max(s.high, s.last);
    s.low = Math.min(s.low, s.last);
    s.volume += 100 * (1 + Math.floor(Math.random() * 50));
    this.seq += 1;
    const now = new Date();
    const direction = s.last > previous ? 'up' : s.last < previous ? 'down' : 'flat';
    const change = s.last - s.open;
    const values = {
      symbol,
      name: s.name,
      direction,
      trend: change > 0 ? 'gain' : change < 0 ? 'loss' : 'unchanged',
      ts: now.getTime(),
      seq: this.seq,
      arrow: ARROWS[direction][0],
      word: ARROWS[direction][1],
      last: fmt(s.last),
      change: signed(change),
      change_pct: signed((100 * change) / s.open),
      high: fmt(s.high),
      low: fmt(s.low),
      volume: s.volume.toLocaleString('en-US'),
      iso: now.toISOString().replace('Z', '+00:00'),
      clock: now.toISOString().slice(11, 19),
    };
    return { seq: this.seq, row: ROW.replace(/\{(\w+)\}/g, (_, k) => values[k]) };
  }
}

// One SSE event, every line of the row with its own data: prefix.
function encode(symbol, seq, row) {
  const data = row.split('\n').map((line) => `data: ${line}\n`).join('');
  return `event: ${symbol}\nid: ${seq}\n${data}\n`;
}

// Call onTick(symbol) for each symbol once per interval, evenly spread, without drift.
function schedule(onTick) {
  const symbols = WORKLOAD.companies.map((c) => c.symbol);
  const step = (WORKLOAD.interval_s * 1000) / symbols.length;
  let due = performance.now();
  let i = 0;
  const next = () => {
    onTick(symbols[i]);
    i = (i + 1) % symbols.length;
    due += step;
    setTimeout(next, Math.max(0, due - performance.now()));
  };
  setTimeout(next, step);
}

module.exports = { Market, encode, schedule };
