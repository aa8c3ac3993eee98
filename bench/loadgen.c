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
 * Build: gcc -O2 -Wall -o loadgen loadgen.c
 * Usage: loadgen --port P [--host 127.0.0.1] [--path /stream[,/other...]] [--n 1000]
 *        [--rate 1000] [--warmup 5] [--window 20] [--grace 5] [--events-per-s 10]
 *        [--ticks-per-s 10]
 * --events-per-s: updates each viewer is owed per second; --ticks-per-s: the whole feed's;
 * --grace: how long after the window deliveries of its ticks are still counted (by_tick).
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

#define LINE_CAP 8192          /* longest SSE line (or header block) kept whole */
#define HIST_BIN_MS 0.1        /* latency histogram resolution */
#define HIST_BINS 1200000      /* 0.1 ms bins up to 120 s; beyond that only max is exact */
#define MAX_STATUS 1000

enum { S_CONNECTING, S_HEADERS, S_BODY, S_DONE };
enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_END };

typedef struct {
    int fd;
    uint8_t state, chunked, cstate, last_cr, has_data, counted_in_window;
    uint16_t path;
    uint32_t reqoff, linelen;
    uint64_t crem;             /* bytes left in the current chunk */
    int64_t ev_ts;             /* tick time found in the current event, -1 if none yet */
    uint64_t ev_name;          /* hash of the current event's name */
    double t_open_ms;          /* realtime ms when connect() was called */
    char *line;
} conn_t;

static struct {
    const char *host;
    int port, n, rate;
    double warmup, window, grace, events_per_s, ticks_per_s;
    char **paths, **reqs;
    size_t *reqlens;
    int npaths;
} cfg = {"127.0.0.1", 0, 1000, 1000, 5.0, 20.0, 5.0, 10.0, 10.0, NULL, NULL, NULL, 0};

static conn_t *conns;
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
static int status_count[MAX_STATUS];
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
    if (c->state == S_BODY) {
        n_held--;
        if (reason_server_closed) n_closed_by_server++;
        if (in_window) n_closed_in_window++;
    } else if (c->state == S_CONNECTING) {
        n_failed_connect++;
    } else {
        n_failed_before_headers++;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = S_DONE;
    free(c->line);
    c->line = NULL;
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

static void dispatch(conn_t *c, double now) {
    if (!c->has_data) return;  /* an event with no data is not dispatched (SSE spec) */
    t_events++;
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
    }
    /* event:, id:, retry: and unknown fields do not matter for the measurement */
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

/* Chunked transfer-encoding: strip the framing, pass the data on. Returns -1 at the last chunk. */
static int body_feed(conn_t *c, const char *p, size_t n, double now) {
    if (!c->chunked) {
        sse_feed(c, p, n, now);
        return 0;
    }
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
            sse_feed(c, p, k, now);
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
    if (status >= 0 && status < MAX_STATUS) status_count[status]++;
    if (status != 200) return -1;
    *end = 0;
    for (char *h = strstr(c->line, "\r\n"); h; h = strstr(h + 2, "\r\n")) {
        if (strncasecmp(h + 2, "transfer-encoding:", 18) == 0 && strcasestr(h + 20, "chunked"))
            c->chunked = 1;
    }
    size_t rest_off = head_len - (c->linelen - k);  /* where the body starts inside p */
    c->linelen = 0;
    c->state = S_BODY;
    n_held++;
    if (n_connect_ms < cfg.n) connect_ms[n_connect_ms++] = now - c->t_open_ms;
    if (rest_off < n) return body_feed(c, p + rest_off, n - rest_off, now);
    return 0;
}

static void send_request(conn_t *c) {
    const char *req = cfg.reqs[c->path];
    size_t len = cfg.reqlens[c->path];
    while (c->reqoff < len) {
        ssize_t w = write(c->fd, req + c->reqoff, len - c->reqoff);
        if (w < 0) {
            if (errno == EAGAIN) return;
            close_conn(c, 0);
            return;
        }
        c->reqoff += w;
    }
    c->state = S_HEADERS;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void open_conn(int i) {
    conn_t *c = &conns[i];
    memset(c, 0, sizeof *c);
    c->ev_ts = -1;
    c->path = i % cfg.npaths;
    c->line = malloc(LINE_CAP);
    c->t_open_ms = now_real_ms();
    n_opened++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->state = S_CONNECTING;
        n_failed_connect++;
        c->state = S_DONE;
        return;
    }
    c->state = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        close_conn(c, 0);
}

static char rbuf[1 << 18];

static void on_event(uint32_t i, uint32_t events) {
    conn_t *c = &conns[i];
    if (c->state == S_DONE) return;
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
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
    if (in_window) w_bytes += r;
    int rc = c->state == S_HEADERS ? headers_feed(c, rbuf, r, now) : body_feed(c, rbuf, r, now);
    if (rc < 0) close_conn(c, 1);
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

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host H] [--path P[,P...]] [--n N] [--rate R]\n"
            "               [--warmup S] [--window S] [--grace S] [--events-per-s E]\n"
            "               [--ticks-per-s T]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *paths_arg = "/stream";
    static struct option opts[] = {
        {"host", 1, 0, 'h'},   {"port", 1, 0, 'p'},   {"path", 1, 0, 'P'},
        {"n", 1, 0, 'n'},      {"rate", 1, 0, 'r'},   {"warmup", 1, 0, 'w'},
        {"window", 1, 0, 'W'}, {"events-per-s", 1, 0, 'e'}, {"ticks-per-s", 1, 0, 't'},
        {"grace", 1, 0, 'g'},
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
        default: usage();
        }
    }
    if (!cfg.port || cfg.n < 1 || cfg.rate < 1 || cfg.window <= 0) usage();

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
                                           "User-Agent: ticker-loadgen\r\n\r\n",
                                           s, cfg.host, cfg.port);
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
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event evs[4096];

    double t0 = now_mono_s(), ramp_end = 0, warm_end = 0, win_end = 0, next_progress = t0 + 1;
    double cpu_start = cpu_s(), cpu_win_start = 0, cpu_win_end = 0;
    for (;;) {
        double t = now_mono_s();
        if (n_opened < cfg.n) {
            int target = (int)((t - t0) * cfg.rate) + 1;
            if (target > cfg.n) target = cfg.n;
            while (n_opened < target) open_conn(n_opened);
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
        } else if (in_window && t >= win_end) {
            in_window = 0;
            window_done = 1;
            win_end_ms = now_real_ms();
            cpu_win_end = cpu_s();
            held_at_end = n_held;
            for (int i = 0; i < cfg.n; i++) {
                if (conns[i].state == S_CONNECTING || conns[i].state == S_HEADERS) pending++;
                if (conns[i].state == S_BODY && !conns[i].counted_in_window) starved++;
            }
            fprintf(stderr, "WINDOW_END %.3f held=%d\n", win_end_ms / 1000.0, n_held);
            fflush(stderr);
        } else if (window_done && t >= win_end + cfg.grace) {
            break;
        }
        if (t >= next_progress) {
            fprintf(stderr, "# t=%.0f opened=%d held=%d failed=%d updates=%lu\n", t - t0, n_opened,
                    n_held, n_failed_connect + n_failed_before_headers + n_closed_by_server,
                    (unsigned long)t_updates);
            next_progress += 1;
        }
        int timeout = n_opened < cfg.n ? 1 : 10;
        int k = epoll_wait(epfd, evs, 4096, timeout);
        for (int j = 0; j < k; j++) on_event(evs[j].data.u32, evs[j].events);
    }

    /* Report. */
    double win_s = (win_end_ms - win_start_ms) / 1000.0;
    double expected = cfg.n * cfg.events_per_s * win_s;
    double expected_held = held_at_end * cfg.events_per_s * win_s;
    /* What the viewers held at the window's end were owed of the ticks published in it. */
    double expected_ticks = (double)held_at_end * n_ticks_seen * cfg.events_per_s / cfg.ticks_per_s;
    qsort(connect_ms, n_connect_ms, sizeof(double), cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_win = cpu_win_end - cpu_win_start;

    printf("{\n");
    printf("  \"n\": %d, \"rate_per_s\": %d, \"warmup_s\": %.1f, \"window_s\": %.3f,\n", cfg.n,
           cfg.rate, cfg.warmup, win_s);
    printf("  \"paths\": %d, \"first_path\": \"%s\", \"events_per_s_per_conn\": %.3f,\n",
           cfg.npaths, cfg.paths[0], cfg.events_per_s);
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
    struct linger lg = {1, 0};
    for (int i = 0; i < cfg.n; i++)
        if (conns[i].fd > 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
        }
    return 0;
}
