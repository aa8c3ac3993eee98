/* loadgen: hold N concurrent Server-Sent Events streams on loopback and measure them.
 *
 * One thread, one epoll loop. It opens N connections to 127.0.0.1:PORT at a bounded rate,
 * sends `GET <path> HTTP/1.1`, parses the response (plain or chunked transfer-encoding) and
 * the SSE events in it, and takes from each event the tick time the server put in its data:
 * `data-ts="<epoch ms>"` (our HTML rows; also `data-ts=\"..\"` inside JSON) or `"ts": <ms>`.
 * Latency is receipt time (CLOCK_REALTIME, the clock the servers stamp with) minus that.
 *
 * Phases: ramp (connections opened at --rate per second), warmup, a measurement window, and a
 * grace period. Only what arrives inside the window is counted, except in `by_tick`, which
 * counts the deliveries of the ticks stamped inside the window until the grace period ends.
 * An event whose tick is older than the moment its connection was opened is the server's
 * snapshot, not an update: it is counted apart and left out of the latency. The report (JSON) goes to stdout; progress, and the
 * lines `WINDOW_START` / `WINDOW_END` that bench/run.py samples the server on, go to stderr.
 *
 * --gzip sends `Accept-Encoding: gzip`; a response with `Content-Encoding: gzip` is inflated per
 * connection with zlib (one z_stream each; the 64 KB output buffer is shared, there is one
 * thread) and its SSE parsed from the inflated bytes. Without --gzip nothing is asked for, but
 * a gzip response is still inflated. `bytes` in the report: what arrived on the sockets
 * (wire, HTTP framing included) and the body after de-chunking and inflating (decoded).
 *
 * --decode-every K decodes, parses and times only connection 0, K, 2K, ...; the others are read
 * and their bytes counted, nothing more. The server writes the same to every connection, so
 * this measures it as before, with a K-th of the client's work: inflating 18,000 gzip streams
 * (270 MB/s decoded) is more than one core of this client can do, not what one browser does.
 * Updates, latency, delivery by tick and decoded bytes are then of the decoded connections.
 *
 * --reconnect makes each viewer behave like a browser's EventSource: when its stream ends (clean
 * end, reset, gzip error), its connect fails or is refused, or the response is not 200 (browsers
 * give up on that; here it is retried, so a 503 or 429 storm shows), it waits the last `retry:`
 * the server sent (3000 ms if none) and reconnects, with `Last-Event-ID` set to the last event
 * ID it had, as a browser does. From the first time a viewer loses an open stream it records:
 * the close, the first 200 after it (the new server accepting it), the first event, the first
 * event with a tick time, and the moment its new stream has delivered an event for as many
 * distinct symbols (upper-case event names) as it had seen before the close: a full snapshot.
 * `reconnect` in the report has their percentiles. --until-back S ends the window once every
 * viewer that lost its stream is back, or S seconds after the first loss. --stdin-control reads
 * `SERVER_UP <epoch ms>` (when bench/run.py saw the new server accept) and `STOP` from stdin.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c -lz   (Debian: zlib1g-dev)
 * Usage: loadgen --port P [--host 127.0.0.1] [--path /stream[,/other...]] [--n 1000]
 *        [--rate 1000] [--warmup 5] [--window 20] [--grace 5] [--events-per-s 10]
 *        [--ticks-per-s 10] [--gzip] [--decode-every K] [--reconnect] [--connect-timeout 10]
 *        [--until-back 30] [--stdin-control] [--per-viewer]
 * --events-per-s: updates each viewer is owed per second; --ticks-per-s: the whole feed's;
 * --grace: how long after the window deliveries of its ticks are still counted (by_tick).
 * --connect-timeout (with --reconnect): seconds from connect() to the response headers before
 * the attempt is given up and retried. --per-viewer adds each viewer's times to the report.
 * With several paths, connection i uses path i % count (the per-symbol variant).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define LINE_CAP 8192          /* longest SSE line (or header block) kept whole */
#define HIST_BIN_MS 0.1        /* latency histogram resolution */
#define HIST_BINS 1200000      /* 0.1 ms bins up to 120 s; beyond that only max is exact */
#define MAX_STATUS 1000
#define ID_CAP 48              /* longest `id:` kept for Last-Event-ID (ours are short numbers) */
#define MAX_SYMBOLS 64         /* distinct symbol names tracked for the snapshot (bits of a word) */
#define DEFAULT_RETRY_MS 3000  /* EventSource's reconnection time before any `retry:` */

enum { S_CONNECTING, S_HEADERS, S_BODY, S_DONE };
enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_END };
enum { GZ_NONE, GZ_ON, GZ_END, GZ_BAD };  /* the body's gzip: none, inflating, ended, invalid */

typedef struct {
    int fd;
    uint8_t state, chunked, cstate, last_cr, has_data, counted_in_window;
    uint8_t decode;            /* parsed and timed (see --decode-every), or only counted */
    uint8_t gz;                /* GZ_*: whether the body goes through z */
    uint8_t again;             /* a reconnect, not the viewer's first connection */
    uint8_t ev_sym;            /* 1 + symbol index of the current event's name, 0 if none */
    uint16_t path;
    uint32_t reqoff, linelen;
    uint64_t crem;             /* bytes left in the current chunk */
    int64_t ev_ts;             /* tick time found in the current event, -1 if none yet */
    uint64_t ev_name;          /* hash of the current event's name */
    double t_open_ms;          /* realtime ms when connect() was called */
    char *line;
    char *req;                 /* this connection's own request (with Last-Event-ID), or NULL */
    z_stream *z;               /* the gzip inflater, while gz == GZ_ON */
} conn_t;

/* What a viewer (connection slot i) keeps across its connections with --reconnect. Times are
 * realtime epoch ms, 0 while not reached. The gap figures are taken from the first loss only. */
typedef struct {
    double next_at;            /* when to connect again; 0 if no attempt is due */
    double t_close;            /* its open stream ended (the first time) */
    double t_accept;           /* the first 200 after that */
    double t_first_any;        /* the first event (with data) after that */
    double t_first_tick;       /* the first event carrying a tick time after that */
    double t_snapshot;         /* a new stream had delivered every symbol it watched */
    uint64_t watched;          /* symbols its streams delivered before the loss */
    uint64_t seen;             /* symbols its current stream has delivered */
    uint32_t retry_ms;         /* the last `retry:` its streams sent */
    uint8_t lost;              /* 0: never lost its stream; 1: lost it, not back; 2: back */
    uint8_t id_len, last_id_len, has_last_id;
    char id_buf[ID_CAP];       /* the current stream's last event ID buffer (SSE spec) */
    char last_id[ID_CAP];      /* the last event ID string, sent as Last-Event-ID */
} viewer_t;

static struct {
    const char *host;
    int port, n, rate;
    double warmup, window, grace, events_per_s, ticks_per_s;
    char **paths, **reqs;
    size_t *reqlens;
    int npaths;
    int gzip, reconnect, stdin_control, per_viewer;
    double connect_timeout, until_back;
    int decode_every;
} cfg = {"127.0.0.1", 0, 1000, 1000, 5.0, 20.0, 5.0, 10.0, 10.0, NULL, NULL, NULL, 0,
         0, 0, 0, 0, 10.0, 0.0, 1};

static conn_t *conns;
static viewer_t *viewers;      /* only with --reconnect */
static int epfd;
static struct sockaddr_in addr;

/* Counters. "w_" ones only count inside the measurement window. */
static int in_window, window_done;
static double win_start_ms, win_end_ms;
static uint64_t w_updates, w_snapshots, w_no_ts, w_comments, w_bytes, w_negative, w_overflow;
static uint64_t t_updates, t_snapshots, t_events;
static double w_lat_sum, w_lat_max;
static uint32_t *hist;
static uint64_t *per_second;
static int per_second_len;
static int n_opened, n_held, n_failed_connect, n_closed_by_server, n_closed_in_window;
static int n_failed_before_headers, held_at_end, pending, starved; /* at the window's end */
/* Of the held connections, those whose streams are decoded, parsed and timed: all of them,
 * or one in --decode-every. What the server does is the same for every connection. */
static int n_held_decoded, held_decoded_at_end;
static int status_count[MAX_STATUS];
/* Bytes: wire is what read() returned (headers, chunk framing, gzip); decoded is the body the
 * SSE parser got. t_ over the whole run, w_bytes / w_decoded inside the window. */
static uint64_t t_wire, t_decoded, w_decoded;
static uint64_t n_gzip_streams, n_gzip_clean_ends, n_gzip_errors, n_gzip_unterminated;
static unsigned char zbuf[1 << 16];  /* inflate's output, shared by all connections */
/* --reconnect: attempts, how they failed, and what the viewers went through. */
static uint64_t n_reconnects, n_refused, n_connect_timeouts, n_header_timeouts, n_with_last_id;
static int reconnect_status[MAX_STATUS];
static int n_lost, n_lost_open, n_lost_again, n_waiting, shutting_down, stop_requested;
static double first_close_ms, last_close_ms, server_up_ms;
static uint64_t sym_hash[MAX_SYMBOLS];  /* the distinct symbol names seen, by hash */
static int n_syms;
/* Delivery by tick: the distinct ticks (event name + data-ts) stamped inside the window that
 * any viewer received, and how many deliveries of them arrived by the end of the grace period
 * after the window. That is judged against what the server actually published, so it is exact
 * where the nominal rate is not (our feed jitters each symbol's interval by +/-50 %) and it
 * does not depend on where the window's edges cut the latency spread. */
#define TICK_SLOTS 65536
static uint64_t tick_set[TICK_SLOTS];
static uint64_t n_ticks_seen, tw_delivered;
static double tw_start_ms, tw_end_ms;

static void tick_seen(uint64_t key) {
    key |= 1; /* 0 marks an empty slot */
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = h >> 48, probes = 0; probes < TICK_SLOTS; i = (i + 1) % TICK_SLOTS, probes++) {
        if (tick_set[i] == key) return;
        if (!tick_set[i]) {
            tick_set[i] = key;
            n_ticks_seen++;
            return;
        }
    }
}

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

/* 1 + the index of symbol `name` (an upper-case event name: A-Z, digits, . - _ and at least
 * one letter) in sym_hash, or 0 if the name is not a symbol or the table is full. */
static uint8_t symbol_of(const char *name, size_t n) {
    int letter = 0;
    if (n == 0 || n > 15) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (ch >= 'A' && ch <= 'Z') letter = 1;
        else if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_')) return 0;
    }
    if (!letter) return 0;
    uint64_t h = hash_bytes(name, n);
    for (int i = 0; i < n_syms; i++)
        if (sym_hash[i] == h) return i + 1;
    if (n_syms == MAX_SYMBOLS) return 0;
    sym_hash[n_syms++] = h;
    return n_syms;
}

static double *connect_ms;  /* per connection: time from connect() to response headers */
static int n_connect_ms;

static double now_real_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static double now_mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void close_conn(conn_t *c, int reason_server_closed) {
    if (c->state == S_DONE) return;
    double now = now_real_ms();
    int was_open = c->state == S_BODY;
    if (c->state == S_BODY) {
        n_held--;
        if (c->decode) n_held_decoded--;
        if (reason_server_closed) n_closed_by_server++;
        if (in_window) n_closed_in_window++;
    } else if (c->state == S_CONNECTING) {
        n_failed_connect++;
    } else {
        n_failed_before_headers++;
    }
    if (c->gz == GZ_ON && was_open) n_gzip_unterminated++;  /* ended without the gzip trailer */
    if (c->z) {
        inflateEnd(c->z);
        free(c->z);
        c->z = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = S_DONE;
    free(c->line);
    c->line = NULL;
    free(c->req);
    c->req = NULL;
    if (!viewers || shutting_down) return;
    /* --reconnect: the first loss of an open stream starts the viewer's gap; any end (lost
     * stream, refused or failed connect, error status) schedules the next attempt. */
    viewer_t *v = &viewers[c - conns];
    if (was_open && v->lost == 0) {
        v->lost = 1;
        v->t_close = now;
        n_lost++;
        n_lost_open++;
        if (!first_close_ms) first_close_ms = now;
        last_close_ms = now;
    } else if (was_open && v->lost == 2) {
        n_lost_again++;  /* a second loss after it was back: reconnects, not measured again */
    }
    if (!v->next_at) n_waiting++;
    v->next_at = now + v->retry_ms;
}

/* Find the tick time in one data line: data-ts="123", data-ts=\"123\" or "ts": 123. */
static int64_t find_ts(const char *p, size_t n) {
    const char *q = memmem(p, n, "data-ts=", 8);
    if (q) {
        q += 8;
    } else {
        q = memmem(p, n, "\"ts\"", 4);
        if (!q) return -1;
        q += 4;
        while (q < p + n && (*q == ' ' || *q == ':')) q++;
    }
    while (q < p + n && (*q == '\\' || *q == '"')) q++;
    int64_t v = 0;
    int digits = 0;
    while (q < p + n && *q >= '0' && *q <= '9') {
        v = v * 10 + (*q - '0');
        q++;
        digits++;
    }
    return digits ? v : -1;
}

/* A blank line: the SSE spec's "dispatch the event". */
static void dispatch(conn_t *c, double now) {
    viewer_t *v = viewers ? &viewers[c - conns] : NULL;
    if (v) {  /* the last event ID string takes the buffer's value, even for a data-less event */
        memcpy(v->last_id, v->id_buf, v->id_len);
        v->last_id_len = v->id_len;
        v->has_last_id = 1;
    }
    if (!c->has_data) {  /* an event with no data is not dispatched (SSE spec) */
        c->ev_ts = -1;
        c->ev_name = 0;
        c->ev_sym = 0;
        return;
    }
    t_events++;
    if (v) {
        if (c->ev_sym) v->seen |= 1ull << (c->ev_sym - 1);
        if (v->lost == 0) {
            v->watched |= v->seen;
        } else if (v->lost == 1) {
            if (!v->t_first_any) v->t_first_any = now;
            if (!v->t_first_tick && c->ev_ts >= 0) v->t_first_tick = now;
            if (__builtin_popcountll(v->seen) >= __builtin_popcountll(v->watched)) {
                v->t_snapshot = now;  /* as many symbols as it watched: a full snapshot */
                v->lost = 2;
                n_lost_open--;
            }
        }
    }
    int64_t ts = c->ev_ts;
    int snapshot = ts >= 0 && (double)ts < c->t_open_ms - 1.0;
    if (ts >= 0) {
        if (snapshot) t_snapshots++;
        else t_updates++;
    }
    if (ts >= 0 && !snapshot && tw_start_ms > 0 && ts >= tw_start_ms && ts < tw_end_ms) {
        tw_delivered++;
        tick_seen((uint64_t)ts * 1000003ull ^ c->ev_name);
    }
    if (in_window) {
        if (!c->counted_in_window) c->counted_in_window = 1;
        if (ts < 0) {
            w_no_ts++;
        } else if (snapshot) {
            w_snapshots++;
        } else {
            w_updates++;
            double lat = now - (double)ts;
            if (lat < 0) {
                w_negative++;
                lat = 0;
            }
            w_lat_sum += lat;
            if (lat > w_lat_max) w_lat_max = lat;
            long bin = (long)(lat / HIST_BIN_MS);
            if (bin >= HIST_BINS) {
                w_overflow++;
                bin = HIST_BINS - 1;
            }
            hist[bin]++;
            int sec = (int)((now - win_start_ms) / 1000.0);
            if (sec >= 0 && sec < per_second_len) per_second[sec]++;
        }
    }
    c->has_data = 0;
    c->ev_ts = -1;
    c->ev_name = 0;
    c->ev_sym = 0;
}

static void sse_line(conn_t *c, const char *p, size_t n, double now) {
    if (n == 0) {
        dispatch(c, now);
    } else if (p[0] == ':') {
        if (in_window) w_comments++;
    } else if (n >= 4 && memcmp(p, "data", 4) == 0 && (n == 4 || p[4] == ':')) {
        c->has_data = 1;
        if (c->ev_ts < 0) c->ev_ts = find_ts(p, n);
    } else if (n >= 5 && memcmp(p, "event", 5) == 0 && (n == 5 || p[5] == ':')) {
        c->ev_name = hash_bytes(p, n);
        if (viewers) {
            size_t k = n > 6 && p[6] == ' ' ? 7 : 6;  /* one space after the colon is not data */
            c->ev_sym = n > k ? symbol_of(p + k, n - k) : 0;
        }
    } else if (viewers && n >= 2 && memcmp(p, "id", 2) == 0 && (n == 2 || p[2] == ':')) {
        viewer_t *v = &viewers[c - conns];
        size_t k = n > 3 && p[3] == ' ' ? 4 : 3;
        size_t len = n > k ? n - k : 0;
        if (!memchr(p + k, 0, len) && len < ID_CAP) {  /* an id with NUL is ignored (spec) */
            memcpy(v->id_buf, p + k, len);
            v->id_len = (uint8_t)len;
        }
    } else if (viewers && n > 6 && memcmp(p, "retry:", 6) == 0) {
        size_t k = p[6] == ' ' ? 7 : 6;
        uint32_t ms = 0;
        int ok = k < n;
        for (size_t i = k; i < n && ok; i++) {
            if (p[i] < '0' || p[i] > '9') ok = 0;  /* only ASCII digits count (spec) */
            else ms = ms * 10 + (p[i] - '0');
        }
        if (ok) viewers[c - conns].retry_ms = ms;
    }
    /* other fields do not matter for the measurement; id: and retry: only for --reconnect */
}

/* Feed body bytes (already de-chunked) to the SSE line splitter. Lines end in \n, \r\n or \r. */
static void sse_feed(conn_t *c, const char *p, size_t n, double now) {
    while (n) {
        if (c->last_cr) {
            c->last_cr = 0;
            if (*p == '\n') {
                p++;
                n--;
                continue;
            }
        }
        size_t i = 0;
        while (i < n && p[i] != '\n' && p[i] != '\r') i++;
        if (i == n) {  /* partial line: keep it for the next read */
            size_t room = LINE_CAP - c->linelen;
            size_t k = i < room ? i : room;
            memcpy(c->line + c->linelen, p, k);
            c->linelen += k;
            return;
        }
        if (c->linelen == 0) {
            sse_line(c, p, i, now);
        } else {
            size_t room = LINE_CAP - c->linelen;
            size_t k = i < room ? i : room;
            memcpy(c->line + c->linelen, p, k);
            c->linelen += k;
            sse_line(c, c->line, c->linelen, now);
            c->linelen = 0;
        }
        if (p[i] == '\r') c->last_cr = 1;
        p += i + 1;
        n -= i + 1;
    }
}

/* The body after de-chunking: inflate it if it is gzip, then hand it to the SSE parser.
 * Returns -2 if the gzip is invalid (the stream then counts as a gzip error). */
static int decode_feed(conn_t *c, const char *p, size_t n, double now) {
    if (c->gz == GZ_NONE) {
        t_decoded += n;
        if (in_window) w_decoded += n;
        sse_feed(c, p, n, now);
        return 0;
    }
    if (c->gz != GZ_ON) return 0;  /* after the gzip end: nothing more is parsed */
    z_stream *z = c->z;
    z->next_in = (unsigned char *)p;
    z->avail_in = (unsigned)n;
    for (;;) {
        z->next_out = zbuf;
        z->avail_out = sizeof zbuf;
        int rc = inflate(z, Z_NO_FLUSH);
        size_t got = sizeof zbuf - z->avail_out;
        if (got) {
            t_decoded += got;
            if (in_window) w_decoded += got;
            sse_feed(c, (const char *)zbuf, got, now);
        }
        if (rc == Z_STREAM_END) {  /* zlib checked the trailer: CRC-32 and length */
            n_gzip_clean_ends++;
            c->gz = GZ_END;
            inflateEnd(z);
            free(z);
            c->z = NULL;
            return 0;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {  /* Z_DATA_ERROR, Z_NEED_DICT, Z_MEM_ERROR */
            n_gzip_errors++;
            c->gz = GZ_BAD;
            return -2;
        }
        /* All input used and the output not full: wait for more. Z_BUF_ERROR: no progress. */
        if ((z->avail_in == 0 && z->avail_out != 0) || (rc == Z_BUF_ERROR && !got)) return 0;
    }
}

/* Chunked transfer-encoding: strip the framing, pass the data on. Returns -1 at the last chunk,
 * -2 on invalid gzip. */
static int body_feed(conn_t *c, const char *p, size_t n, double now) {
    if (!c->chunked) return decode_feed(c, p, n, now);
    while (n) {
        switch (c->cstate) {
        case C_SIZE: {
            char ch = *p;
            int d = (ch >= '0' && ch <= '9') ? ch - '0'
                    : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                    : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10
                    : -1;
            if (d >= 0) c->crem = c->crem * 16 + d;
            else if (ch == '\r') c->cstate = C_SIZE_LF;
            else if (ch == '\n') c->cstate = c->crem ? C_DATA : C_END;
            else c->cstate = C_EXT;
            p++, n--;
            break;
        }
        case C_EXT:
            if (*p == '\r') c->cstate = C_SIZE_LF;
            else if (*p == '\n') c->cstate = c->crem ? C_DATA : C_END;
            p++, n--;
            break;
        case C_SIZE_LF:
            c->cstate = c->crem ? C_DATA : C_END;
            p++, n--;
            break;
        case C_DATA: {
            size_t k = n < c->crem ? n : (size_t)c->crem;
            if (decode_feed(c, p, k, now) < 0) return -2;
            c->crem -= k;
            p += k, n -= k;
            if (c->crem == 0) c->cstate = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            c->cstate = (*p == '\r') ? C_DATA_LF : C_SIZE;
            if (*p == '\r' || *p == '\n') p++, n--;
            break;
        case C_DATA_LF:
            c->cstate = C_SIZE;
            if (*p == '\n') p++, n--;
            break;
        case C_END:
            return -1;
        }
    }
    return c->cstate == C_END ? -1 : 0;
}

/* Whether header line h ("Name: value", ending at \r\n or NUL) is `name` with `token` in its
 * value (case-insensitive). */
static int header_has(const char *h, const char *name, const char *token) {
    size_t nl = strlen(name);
    if (strncasecmp(h, name, nl) != 0 || h[nl] != ':') return 0;
    const char *end = strstr(h, "\r\n");
    size_t len = end ? (size_t)(end - h) : strlen(h);
    char value[256];
    if (len - nl - 1 >= sizeof value) return 0;
    memcpy(value, h + nl + 1, len - nl - 1);
    value[len - nl - 1] = 0;
    return strcasestr(value, token) != NULL;
}

/* Response headers arrive in c->line; on the blank line, check the status and go to body. */
static int headers_feed(conn_t *c, const char *p, size_t n, double now) {
    size_t room = LINE_CAP - 1 - c->linelen;
    size_t k = n < room ? n : room;
    memcpy(c->line + c->linelen, p, k);
    c->linelen += k;
    c->line[c->linelen] = 0;
    char *end = strstr(c->line, "\r\n\r\n");
    if (!end) {
        if (c->linelen >= LINE_CAP - 1) return -1;
        return 0;
    }
    size_t head_len = end + 4 - c->line;
    int status = 0;
    if (sscanf(c->line, "HTTP/%*d.%*d %d", &status) != 1) status = 0;
    viewer_t *v = viewers ? &viewers[c - conns] : NULL;
    if (status >= 0 && status < MAX_STATUS) {
        status_count[status]++;
        if (v && v->lost) reconnect_status[status]++;
    }
    if (status != 200) return -1;
    *end = 0;
    for (char *h = strstr(c->line, "\r\n"); h; h = strstr(h + 2, "\r\n")) {
        if (header_has(h + 2, "transfer-encoding", "chunked")) c->chunked = 1;
        if (header_has(h + 2, "content-encoding", "gzip")) c->gz = GZ_ON;
    }
    if (c->gz == GZ_ON && !c->decode) {
        n_gzip_streams++;  /* counted, not inflated: its bytes are only read */
    } else if (c->gz == GZ_ON) {
        c->z = calloc(1, sizeof(z_stream));
        if (!c->z || inflateInit2(c->z, 16 + 15) != Z_OK) {  /* 16 + 15: a gzip wrapper */
            n_gzip_errors++;
            c->gz = GZ_BAD;
            return -1;
        }
        n_gzip_streams++;
    }
    if (v) {
        v->seen = 0;  /* the snapshot is counted afresh on each new stream */
        if (v->lost == 1 && !v->t_accept) v->t_accept = now;
    }
    size_t rest_off = head_len - (c->linelen - k);  /* where the body starts inside p */
    c->linelen = 0;
    c->state = S_BODY;
    n_held++;
    if (c->decode) n_held_decoded++;
    if (!c->again && n_connect_ms < cfg.n) connect_ms[n_connect_ms++] = now - c->t_open_ms;
    if (rest_off < n && c->decode) return body_feed(c, p + rest_off, n - rest_off, now);
    return 0;
}

static void send_request(conn_t *c) {
    const char *req = c->req ? c->req : cfg.reqs[c->path];
    size_t len = c->req ? strlen(c->req) : cfg.reqlens[c->path];
    while (c->reqoff < len) {
        ssize_t w = write(c->fd, req + c->reqoff, len - c->reqoff);
        if (w < 0) {
            if (errno == EAGAIN) return;
            close_conn(c, 0);
            return;
        }
        c->reqoff += w;
    }
    free(c->req);
    c->req = NULL;
    c->state = S_HEADERS;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Open viewer i's connection: its first (the ramp) or, with --reconnect, another one. */
static void open_conn(int i, int again) {
    conn_t *c = &conns[i];
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->ev_ts = -1;
    c->again = (uint8_t)again;
    c->path = i % cfg.npaths;
    c->decode = i % cfg.decode_every == 0;
    c->line = malloc(LINE_CAP);
    c->t_open_ms = now_real_ms();
    if (again) n_reconnects++;
    else n_opened++;
    if (viewers) {
        viewer_t *v = &viewers[i];
        v->id_len = 0;  /* a new stream's last event ID buffer starts empty (spec) */
        if (v->has_last_id && v->last_id_len) {  /* the request a browser makes on reconnect */
            const char *base = cfg.reqs[c->path];
            int blen = (int)cfg.reqlens[c->path] - 2;  /* without the final blank line */
            if (asprintf(&c->req, "%.*sLast-Event-ID: %.*s\r\n\r\n", blen, base,
                         (int)v->last_id_len, v->last_id) < 0)
                c->req = NULL;
            else
                n_with_last_id++;
        }
    }
    c->state = S_CONNECTING;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        close_conn(c, 0);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        if (errno == ECONNREFUSED) n_refused++;
        close_conn(c, 0);
    }
}

/* --reconnect: start the attempts that are due, and give up on those that took too long. */
static void run_timers(double now) {
    for (int i = 0; i < n_opened; i++) {
        conn_t *c = &conns[i];
        viewer_t *v = &viewers[i];
        if (v->next_at && now >= v->next_at) {
            v->next_at = 0;
            n_waiting--;
            open_conn(i, 1);
        } else if ((c->state == S_CONNECTING || c->state == S_HEADERS) &&
                   now - c->t_open_ms >= cfg.connect_timeout * 1000.0) {
            if (c->state == S_CONNECTING) n_connect_timeouts++;
            else n_header_timeouts++;
            close_conn(c, 0);
        }
    }
}

/* --stdin-control: lines "SERVER_UP <epoch ms>" and "STOP". */
static void read_control(void) {
    static char buf[256];
    static size_t len;
    ssize_t r = read(0, buf + len, sizeof buf - 1 - len);
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
        return;
    }
    len += r;
    buf[len] = 0;
    char *nl;
    while ((nl = strchr(buf, '\n'))) {
        *nl = 0;
        double ms;
        if (sscanf(buf, "SERVER_UP %lf", &ms) == 1) server_up_ms = ms;
        else if (strncmp(buf, "STOP", 4) == 0) stop_requested = 1;
        len -= nl + 1 - buf;
        memmove(buf, nl + 1, len + 1);
    }
    if (len == sizeof buf - 1) len = 0;  /* an overlong line: drop it */
}

static char rbuf[1 << 18];

static void on_event(uint32_t i, uint32_t events) {
    if (i == UINT32_MAX) {
        read_control();
        return;
    }
    conn_t *c = &conns[i];
    if (c->state == S_DONE) return;
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            if (err == ECONNREFUSED) n_refused++;
            close_conn(c, 0);
            return;
        }
        send_request(c);
        return;
    }
    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        close_conn(c, 1);
        return;
    }
    if (r < 0) return;
    double now = now_real_ms();
    t_wire += r;
    if (in_window) w_bytes += r;
    int rc = c->state == S_HEADERS ? headers_feed(c, rbuf, r, now)
             : c->decode          ? body_feed(c, rbuf, r, now)
                                  : 0;
    if (rc < 0) close_conn(c, rc == -1);  /* -1: the server ended it; -2: we did (bad gzip) */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double hist_pct(uint64_t total, double q) {
    if (!total) return -1;
    uint64_t want = (uint64_t)(q * total + 0.5);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (long b = 0; b < HIST_BINS; b++) {
        acc += hist[b];
        if (acc >= want) return (b + 0.5) * HIST_BIN_MS;
    }
    return w_lat_max;
}

static double arr_pct(double *a, int n, double q) {
    if (!n) return -1;
    int k = (int)(q * (n - 1) + 0.5);
    return a[k];
}

/* Print `"name": {"n": .., "p50": .., "p90": .., "p99": .., "max": ..}` of a[0..n), sorting it. */
static void print_pcts(const char *name, double *a, int n) {
    qsort(a, n, sizeof(double), cmp_double);
    printf("\"%s\": {\"n\": %d, \"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"max\": %.0f}", name,
           n, arr_pct(a, n, 0.5), arr_pct(a, n, 0.9), arr_pct(a, n, 0.99), n ? a[n - 1] : -1.0);
}

/* The share (%) of the viewers that lost their stream which were back with a full snapshot
 * within 5 s of `ref` (a viewer's own first accept if ref is 0, none if ref < 0). */
static double back_within_5s(double ref) {
    if (!n_lost || ref < 0) return -1;
    int k = 0;
    for (int i = 0; i < n_opened; i++) {
        viewer_t *v = &viewers[i];
        if (v->lost != 2) continue;
        double from = ref > 0 ? ref : v->t_accept;
        if (v->t_snapshot - from <= 5000.0) k++;
    }
    return 100.0 * k / n_lost;
}

static void print_reconnect(void) {
    double *a = calloc(n_opened + 1, sizeof(double));
    double first_accept = 0, last_accept = 0;
    for (int i = 0; i < n_opened; i++) {
        double t = viewers[i].t_accept;
        if (t && (!first_accept || t < first_accept)) first_accept = t;
        if (t > last_accept) last_accept = t;
    }
    printf("  \"reconnect\": {\"viewers_lost\": %d, \"viewers_back\": %d, \"not_back\": %d, "
           "\"lost_again\": %d, \"attempts\": %lu, \"with_last_event_id\": %lu, "
           "\"refused\": %lu, \"connect_timed_out\": %lu, \"headers_timed_out\": %lu, "
           "\"connect_timeout_s\": %.1f, \"status\": {",
           n_lost, n_lost - n_lost_open, n_lost_open, n_lost_again, (unsigned long)n_reconnects,
           (unsigned long)n_with_last_id, (unsigned long)n_refused,
           (unsigned long)n_connect_timeouts, (unsigned long)n_header_timeouts,
           cfg.connect_timeout);
    int first = 1;
    for (int s = 0; s < MAX_STATUS; s++)
        if (reconnect_status[s]) {
            printf("%s\"%d\": %d", first ? "" : ", ", s, reconnect_status[s]);
            first = 0;
        }
    printf("},\n    \"first_close_epoch_ms\": %.0f, \"last_close_epoch_ms\": %.0f, "
           "\"first_accept_epoch_ms\": %.0f, \"last_accept_epoch_ms\": %.0f, "
           "\"server_up_epoch_ms\": %.0f,\n    ",
           first_close_ms, last_close_ms, first_accept, last_accept, server_up_ms);
    /* Each gap from the viewer's close, over the viewers that reached that point. */
    static const char *names[] = {"close_to_accept_ms", "gap_any_event_ms", "gap_first_event_ms",
                                  "gap_snapshot_ms"};
    for (int g = 0; g < 4; g++) {
        int k = 0;
        for (int i = 0; i < n_opened; i++) {
            viewer_t *v = &viewers[i];
            double t = g == 0 ? v->t_accept : g == 1 ? v->t_first_any
                       : g == 2 ? v->t_first_tick : v->t_snapshot;
            if (v->lost && t) a[k++] = t - v->t_close;
        }
        print_pcts(names[g], a, k);
        printf(g == 1 ? ",\n    " : ", ");
    }
    /* And from the new server accepting: the runner's view if it sent one, else loadgen's. */
    {
        int k = 0;
        for (int i = 0; i < n_opened; i++)
            if (viewers[i].lost == 2) a[k++] = viewers[i].t_snapshot - first_accept;
        print_pcts("snapshot_after_first_accept_ms", a, k);
    }
    printf(",\n    \"pct_back_within_5s_of_first_accept\": %.2f, "
           "\"pct_back_within_5s_of_server_up\": %.2f, "
           "\"pct_back_within_5s_of_own_accept\": %.2f",
           back_within_5s(first_accept ? first_accept : -1),
           back_within_5s(server_up_ms ? server_up_ms : -1), back_within_5s(0));
    if (cfg.per_viewer) {  /* [close, accept, first event, full snapshot] ms after first close */
        printf(",\n    \"per_viewer\": [");
        for (int i = 0; i < n_opened; i++) {
            viewer_t *v = &viewers[i];
            double b = first_close_ms;
#define REL(t) ((t) ? (t) - b : -1.0)
            printf("%s[%.0f, %.0f, %.0f, %.0f]", i ? ", " : "", REL(v->t_close), REL(v->t_accept),
                   REL(v->t_first_any), REL(v->t_snapshot));
#undef REL
        }
        printf("]");
    }
    printf("},\n");
    free(a);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host H] [--path P[,P...]] [--n N] [--rate R]\n"
            "               [--warmup S] [--window S] [--grace S] [--events-per-s E]\n"
            "               [--ticks-per-s T] [--gzip] [--decode-every K] [--reconnect]\n"
            "               [--connect-timeout S]\n"
            "               [--until-back S] [--stdin-control] [--per-viewer]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *paths_arg = "/stream";
    static struct option opts[] = {
        {"host", 1, 0, 'h'},   {"port", 1, 0, 'p'},   {"path", 1, 0, 'P'},
        {"n", 1, 0, 'n'},      {"rate", 1, 0, 'r'},   {"warmup", 1, 0, 'w'},
        {"window", 1, 0, 'W'}, {"events-per-s", 1, 0, 'e'}, {"ticks-per-s", 1, 0, 't'},
        {"grace", 1, 0, 'g'},  {"gzip", 0, 0, 'z'},   {"reconnect", 0, 0, 'R'},
        {"connect-timeout", 1, 0, 'T'}, {"until-back", 1, 0, 'U'},
        {"stdin-control", 0, 0, 'S'}, {"per-viewer", 0, 0, 'V'},
        {"decode-every", 1, 0, 'D'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'P': paths_arg = optarg; break;
        case 'n': cfg.n = atoi(optarg); break;
        case 'r': cfg.rate = atoi(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'W': cfg.window = atof(optarg); break;
        case 'e': cfg.events_per_s = atof(optarg); break;
        case 't': cfg.ticks_per_s = atof(optarg); break;
        case 'g': cfg.grace = atof(optarg); break;
        case 'z': cfg.gzip = 1; break;
        case 'R': cfg.reconnect = 1; break;
        case 'T': cfg.connect_timeout = atof(optarg); break;
        case 'U': cfg.until_back = atof(optarg); break;
        case 'S': cfg.stdin_control = 1; break;
        case 'V': cfg.per_viewer = 1; break;
        case 'D': cfg.decode_every = atoi(optarg); break;
        default: usage();
        }
    }
    if (!cfg.port || cfg.n < 1 || cfg.rate < 1 || cfg.window <= 0 || cfg.decode_every < 1) usage();

    /* Loopback only: refuse anything that is not 127.0.0.0/8. */
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(cfg.port);
    if (inet_pton(AF_INET, cfg.host, &addr.sin_addr) != 1 ||
        (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: --host must be a loopback address (127.x.x.x)\n");
        return 2;
    }

    char *pa = strdup(paths_arg);
    for (char *s = strtok(pa, ","); s; s = strtok(NULL, ",")) {
        cfg.paths = realloc(cfg.paths, sizeof(char *) * (cfg.npaths + 1));
        cfg.reqs = realloc(cfg.reqs, sizeof(char *) * (cfg.npaths + 1));
        cfg.reqlens = realloc(cfg.reqlens, sizeof(size_t) * (cfg.npaths + 1));
        cfg.paths[cfg.npaths] = s;
        cfg.reqlens[cfg.npaths] = asprintf(&cfg.reqs[cfg.npaths],
                                           "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                                           "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
                                           "User-Agent: ticker-loadgen\r\n%s\r\n",
                                           s, cfg.host, cfg.port,
                                           cfg.gzip ? "Accept-Encoding: gzip\r\n" : "");
        cfg.npaths++;
    }

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)cfg.n + 64 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: open-file limit %lu is too low for %d connections\n",
                (unsigned long)rl.rlim_cur, cfg.n);
        return 2;
    }

    conns = calloc(cfg.n, sizeof(conn_t));
    hist = calloc(HIST_BINS, sizeof(uint32_t));
    per_second_len = (int)cfg.window + 2;
    per_second = calloc(per_second_len, sizeof(uint64_t));
    connect_ms = calloc(cfg.n, sizeof(double));
    if (cfg.reconnect) {
        viewers = calloc(cfg.n, sizeof(viewer_t));
        for (int i = 0; i < cfg.n; i++) viewers[i].retry_ms = DEFAULT_RETRY_MS;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (cfg.stdin_control) {
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    }
    struct epoll_event evs[4096];
    double next_timers = 0;

    double t0 = now_mono_s(), ramp_end = 0, warm_end = 0, win_end = 0, next_progress = t0 + 1;
    double window_done_at = 0;  /* when the window ended: early with --until-back or STOP */
    double cpu_start = cpu_s(), cpu_win_start = 0, cpu_win_end = 0;
    for (;;) {
        double t = now_mono_s();
        if (n_opened < cfg.n) {
            int target = (int)((t - t0) * cfg.rate) + 1;
            if (target > cfg.n) target = cfg.n;
            while (n_opened < target) open_conn(n_opened, 0);
            if (n_opened == cfg.n) {
                ramp_end = t;
                warm_end = ramp_end + cfg.warmup;
                win_end = warm_end + cfg.window;
                fprintf(stderr, "RAMP_DONE %.3f opened=%d held=%d\n", t - t0, n_opened, n_held);
            }
        } else if (!in_window && !window_done && t >= warm_end) {
            in_window = 1;
            win_start_ms = now_real_ms();
            tw_start_ms = win_start_ms;
            tw_end_ms = win_start_ms + cfg.window * 1000.0;
            cpu_win_start = cpu_s();
            fprintf(stderr, "WINDOW_START %.3f held=%d\n", win_start_ms / 1000.0, n_held);
            fflush(stderr);
        } else if (in_window && (t >= win_end || stop_requested ||
                                 (cfg.until_back > 0 && first_close_ms &&
                                  ((n_lost_open == 0 && n_held == cfg.n) ||
                                   now_real_ms() - first_close_ms >= cfg.until_back * 1000.0)))) {
            in_window = 0;
            window_done = 1;
            window_done_at = t;
            win_end_ms = now_real_ms();
            cpu_win_end = cpu_s();
            held_at_end = n_held;
            held_decoded_at_end = n_held_decoded;
            for (int i = 0; i < cfg.n; i++) {
                if (conns[i].state == S_CONNECTING || conns[i].state == S_HEADERS) pending++;
                if (conns[i].state == S_BODY && conns[i].decode && !conns[i].counted_in_window)
                    starved++;
            }
            fprintf(stderr, "WINDOW_END %.3f held=%d\n", win_end_ms / 1000.0, n_held);
            fflush(stderr);
        } else if (window_done && (t >= window_done_at + cfg.grace || stop_requested)) {
            break;
        }
        if (viewers) {  /* 10 ms steps while attempts are due, else 100 ms for the timeouts */
            double nr = now_real_ms();
            if (nr >= next_timers) {
                run_timers(nr);
                next_timers = nr + (n_waiting ? 10 : 100);
            }
        }
        if (t >= next_progress) {
            fprintf(stderr, "# t=%.0f opened=%d held=%d failed=%d updates=%lu", t - t0, n_opened,
                    n_held, n_failed_connect + n_failed_before_headers + n_closed_by_server,
                    (unsigned long)t_updates);
            if (viewers)
                fprintf(stderr, " lost=%d back=%d waiting=%d refused=%lu", n_lost,
                        n_lost - n_lost_open, n_waiting, (unsigned long)n_refused);
            fprintf(stderr, "\n");
            next_progress += 1;
        }
        int timeout = n_opened < cfg.n ? 1 : 10;
        int k = epoll_wait(epfd, evs, 4096, timeout);
        for (int j = 0; j < k; j++) on_event(evs[j].data.u32, evs[j].events);
    }

    /* Report. */
    double win_s = (win_end_ms - win_start_ms) / 1000.0;
    /* Updates are counted on the decoded connections only: so is what they were owed. */
    int decoded_n = (cfg.n + cfg.decode_every - 1) / cfg.decode_every;
    double expected = decoded_n * cfg.events_per_s * win_s;
    double expected_held = held_decoded_at_end * cfg.events_per_s * win_s;
    /* What the viewers held at the window's end were owed of the ticks published in it. */
    double expected_ticks =
        (double)held_decoded_at_end * n_ticks_seen * cfg.events_per_s / cfg.ticks_per_s;
    qsort(connect_ms, n_connect_ms, sizeof(double), cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_win = cpu_win_end - cpu_win_start;

    printf("{\n");
    printf("  \"n\": %d, \"rate_per_s\": %d, \"warmup_s\": %.1f, \"window_s\": %.3f,\n", cfg.n,
           cfg.rate, cfg.warmup, win_s);
    printf("  \"paths\": %d, \"first_path\": \"%s\", \"events_per_s_per_conn\": %.3f,\n",
           cfg.npaths, cfg.paths[0], cfg.events_per_s);
    printf("  \"decode_every\": %d, \"decoded_held\": %d,\n", cfg.decode_every,
           held_decoded_at_end);
    printf("  \"window_start_epoch_ms\": %.0f, \"window_end_epoch_ms\": %.0f,\n", win_start_ms,
           win_end_ms);
    printf("  \"connections\": {\"attempted\": %d, \"held\": %d, \"pending\": %d, "
           "\"failed_connect\": %d, \"failed_before_headers\": %d, \"closed_by_server\": %d, "
           "\"closed_in_window\": %d, \"starved_in_window\": %d, \"status\": {",
           n_opened, held_at_end, pending, n_failed_connect, n_failed_before_headers,
           n_closed_by_server, n_closed_in_window, starved);
    int first = 1;
    for (int s = 0; s < MAX_STATUS; s++)
        if (status_count[s]) {
            printf("%s\"%d\": %d", first ? "" : ", ", s, status_count[s]);
            first = 0;
        }
    printf("}},\n");
    printf("  \"connect_ms\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f},\n",
           arr_pct(connect_ms, n_connect_ms, 0.5), arr_pct(connect_ms, n_connect_ms, 0.99),
           n_connect_ms ? connect_ms[n_connect_ms - 1] : -1.0);
    printf("  \"events\": {\"updates\": %lu, \"expected\": %.0f, \"pct_of_expected\": %.3f, "
           "\"expected_for_held\": %.0f, \"pct_of_expected_for_held\": %.3f, "
           "\"updates_per_s\": %.1f, \"snapshots\": %lu, \"without_ts\": %lu, \"comments\": %lu, "
           "\"bytes\": %lu},\n",
           (unsigned long)w_updates, expected, expected ? 100.0 * w_updates / expected : 0.0,
           expected_held, expected_held ? 100.0 * w_updates / expected_held : 0.0,
           w_updates / win_s, (unsigned long)w_snapshots, (unsigned long)w_no_ts,
           (unsigned long)w_comments, (unsigned long)w_bytes);
    printf("  \"by_tick\": {\"ticks_in_window\": %lu, \"nominal_ticks\": %.0f, \"expected\": %.0f, "
           "\"delivered\": %lu, \"pct_delivered\": %.3f, \"grace_s\": %.1f},\n",
           (unsigned long)n_ticks_seen, cfg.ticks_per_s * cfg.window, expected_ticks,
           (unsigned long)tw_delivered, expected_ticks ? 100.0 * tw_delivered / expected_ticks : 0.0,
           cfg.grace);
    printf("  \"latency_ms\": {\"count\": %lu, \"mean\": %.2f, \"p50\": %.2f, \"p95\": %.2f, "
           "\"p99\": %.2f, \"max\": %.2f, \"negative_clamped\": %lu, \"over_120s\": %lu},\n",
           (unsigned long)w_updates, w_updates ? w_lat_sum / w_updates : -1.0,
           hist_pct(w_updates, 0.50), hist_pct(w_updates, 0.95), hist_pct(w_updates, 0.99),
           w_updates ? w_lat_max : -1.0, (unsigned long)w_negative, (unsigned long)w_overflow);
    double viewer_s = held_at_end * win_s;  /* per viewer held at the window's end, per second */
    double decoded_s = held_decoded_at_end * win_s;  /* decoded bytes: per decoded viewer */
    printf("  \"bytes\": {\"gzip_requested\": %s, \"wire_total\": %lu, \"decoded_total\": %lu, "
           "\"wire_window\": %lu, \"decoded_window\": %lu, ",
           cfg.gzip ? "true" : "false", (unsigned long)t_wire, (unsigned long)t_decoded,
           (unsigned long)w_bytes, (unsigned long)w_decoded);
    if (viewer_s > 0)
        printf("\"wire_bytes_per_viewer_s\": %.1f, \"decoded_bytes_per_viewer_s\": %.1f, ",
               w_bytes / viewer_s, decoded_s > 0 ? w_decoded / decoded_s : 0.0);
    else
        printf("\"wire_bytes_per_viewer_s\": null, \"decoded_bytes_per_viewer_s\": null, ");
    printf("\"decoded_per_wire\": %.3f, \"gzip_streams\": %lu, \"gzip_clean_ends\": %lu, "
           "\"gzip_errors\": %lu, \"gzip_unterminated\": %lu},\n",
           w_bytes ? (double)w_decoded / w_bytes : 0.0, (unsigned long)n_gzip_streams,
           (unsigned long)n_gzip_clean_ends, (unsigned long)n_gzip_errors,
           (unsigned long)n_gzip_unterminated);
    if (viewers) print_reconnect();
    printf("  \"updates_per_second\": [");
    for (int s = 0; s < (int)win_s && s < per_second_len; s++)
        printf("%s%lu", s ? ", " : "", (unsigned long)per_second[s]);
    printf("],\n");
    printf("  \"loadgen\": {\"cpu_s_window\": %.3f, \"cpu_pct_of_core_window\": %.1f, "
           "\"cpu_s_total\": %.3f, \"max_rss_mb\": %.1f}\n",
           cpu_win, 100.0 * cpu_win / win_s, cpu_s() - cpu_start, ru.ru_maxrss / 1024.0);
    printf("}\n");
    fflush(stdout);

    /* Reset rather than FIN: no TIME_WAIT left behind to eat the next run's local ports. */
    shutting_down = 1;
    struct linger lg = {1, 0};
    for (int i = 0; i < cfg.n; i++)
        if (conns[i].fd > 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
        }
    return 0;
}
