/* lurestream load generator: holds many SSE streams with one epoll loop and measures
 *   - connect -> response headers latency (and status codes),
 *   - delivery latency of each live event: now - the envelope "ts" (publisher's clock, same host),
 * without becoming the bottleneck (reports its own CPU time).
 *
 *   loadgen HOST PORT PATHS_FILE COUNT SECONDS [RAMP_PER_S] [SOURCES] [RETRIES]
 *
 * PATHS_FILE: one request path per line (with its ?token= or ?ticket=), used round-robin.
 * Connects COUNT streams (at most RAMP_PER_S new connections per second, 0 = as fast as possible,
 * at most 256 connects in flight), keeps them SECONDS after the last one is resolved, then prints one
 * JSON object on stdout.
 * SOURCES: comma-separated source addresses (e.g. 127.0.0.2,127.0.0.3); connection i binds to
 * SOURCES[i % n] before connecting (IP_BIND_ADDRESS_NO_PORT: the port is picked at connect() time, so
 * each source has the whole ephemeral range towards the server — one source gives ~28,000 connections).
 * "" or "-": the kernel picks the source.
 * RETRIES (default 0): a connection refused (a status other than 200, or a connect/reset failure) is
 * opened again 1-2 s later, up to RETRIES times, as a dashboard recreating its EventSource would; every
 * refusal is still counted by status.
 *
 * A response other than 200 is counted by status and its connection closed at once (an EventSource
 * does not retry those); "up" counts streams that got a 200 and are still open.
 * "Retry later" (a refusal that clears on its own, answered to `Accept: text/event-stream` as a 200 with
 * Content-Length: `retry: N`, `event: unavailable` with {"status": 429|503, ...}, then the end of the
 * response) is never a stream: it is counted in "statuses" as "wait_<status>" (not as a 200, and not in
 * the connect→headers latency) and the connection is opened again N ms later, as EventSource does, without
 * using up RETRIES; after MAX_WAITS such answers in a row the connection gives up (never up).
 * Signals: SIGUSR1 resets the event counters (the runner sends it when the load starts); SIGUSR2 marks
 * the end of publishing (what arrives after it is reported separately: in-flight deliveries; once no
 * event has arrived for QUIET seconds after it, one line "DRAINED after=N" goes to stderr);
 * SIGTERM/SIGINT end the run early (the JSON is still printed).
 * Once every connection is resolved (200, refused or failed) one line "READY up=N" goes to stderr.
 *
 * LOADGEN_LOGS=MIN_ID: the live log feed (protocol §15, and the DECNET-style baseline): frames are
 * `event: message` with data {"type":"logs","data":[rows]}; each row is an object whose first member is
 * "id" and which holds "ins": <epoch seconds the bench inserted it> (in "fields", as an object or as JSON
 * text). Every row with id >= MIN_ID is one delivery: latency = arrival - ins. Rows are read as they
 * arrive, however long their frame (no frame is kept whole). Per connection the JSON gets, under "logs",
 * [rows, sum of ids, sum of mix64(id), rows whose id was not above the previous one] (sums mod 2^64), so
 * the runner can check each stream's rows against the exact set it expects.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define CARRY 8192
#define SAMPLES 1000000
#define MAX_SOURCES 64
#define MAX_ERRNO 200
#define MAX_WAITS 30 /* "retry later" answers in a row a connection follows before it gives up */
static double QUIET = 2.0; /* seconds without an event, after publishing ended, that mean nothing is in flight
                            * (LOADGEN_QUIET=S: the live log feed's rows come a poll apart, not continuously) */

enum { CONNECTING, SENT, STREAMING, CLOSED };
enum { NEVER_UP = 1, CLOSED_EARLY = 2 }; /* why a connection is not streaming at the end */

typedef struct {
    int fd;
    int state;
    int why;
    double started;
    int status;
    int attempts; /* retries made */
    int waits; /* "retry later" answers in a row */
    int wait_len; /* while its body arrives: the head's length plus Content-Length; else 0 */
    char carry[CARRY]; /* the response head while it arrives, then an unfinished frame (log mode: row) */
    int carried;
    /* log mode: rows counted (id >= logs_min_id), their ids' sums, ids not above the previous one */
    long rows, disorder;
    long long last_id;
    uint64_t id_sum, id_mix;
} conn_t;

static volatile sig_atomic_t stop_flag = 0, reset_flag = 0, mark_flag = 0;
static void on_stop(int s) { (void)s; stop_flag = 1; }
static void on_reset(int s) { (void)s; reset_flag = 1; }
static void on_mark(int s) { (void)s; mark_flag = 1; }

static double now_mono(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double now_wall(void) { struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec + t.tv_nsec / 1e9; }

/* reservoir samples of latencies (seconds) */
typedef struct { double *v; long n, seen; } reservoir_t;
static void res_add(reservoir_t *r, double x) {
    r->seen++;
    if (r->n < SAMPLES) { r->v[r->n++] = x; return; }
    long j = random() % r->seen;
    if (j < SAMPLES) r->v[j] = x;
}
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static double pct(reservoir_t *r, double p) {
    if (!r->n) return 0;
    long i = (long)(p * (r->n - 1));
    return r->v[i];
}

static reservoir_t headers_lat, event_lat;
static long events = 0, bytes_in = 0, closed_early = 0, up = 0, non200 = 0;
static long failed_connect = 0, failed_headers = 0, retry_frames = 0, error_frames = 0;
static long statuses[600], wait_statuses[600], waits_gave_up = 0;
static long connect_errors[MAX_ERRNO + 1];
static long events_at_mark = -1;
static double mark_at = 0, last_event_at = 0;
static int drained = 0;
static int logs_mode = 0; /* LOADGEN_LOGS set: rows of the live log feed are the deliveries */
static long long logs_min_id = 0;

/* the connections, and what opening one needs */
static conn_t *conns;
static int ep, nsources;
static struct sockaddr_in addr, sources[MAX_SOURCES];
static long inflight = 0, retries = 0, retried = 0;
/* connections waiting to be opened again (each at most once at a time: a ring of COUNT entries) */
static long *rq, rq_head = 0, rq_len = 0, rq_cap = 0;
static double *rq_due;
/* LOADGEN_CONNECT_LOG=FILE: one line per response head, "index started_s latency_s status" (started: since
 * the run began), to see which connects make a storm's tail */
static FILE *connect_log;
static double run_began;

static const char *errno_name(int e) {
    switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EADDRINUSE: return "EADDRINUSE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case EPIPE: return "EPIPE";
    case EAGAIN: return "EAGAIN";
    case ENETUNREACH: return "ENETUNREACH";
    default: return NULL;
    }
}

static void connect_error(int e) {
    failed_connect++;
    connect_errors[e > 0 && e <= MAX_ERRNO ? e : 0]++;
}

/* the connection could not become a stream: open it again later, or give up on it */
static void refused(long idx) {
    conn_t *c = &conns[idx];
    c->state = CLOSED;
    if (c->attempts < retries) {
        c->attempts++; retried++; c->why = 0;
        long pos = (rq_head + rq_len) % rq_cap;
        rq[pos] = idx; rq_due[pos] = now_mono() + 1.0 + (random() % 1000) / 1000.0; rq_len++;
    } else {
        c->why = NEVER_UP;
    }
}

/* a "retry later" answer, complete in c->carry: open the connection again after its retry: */
static void waited(long idx, int head_len) {
    conn_t *c = &conns[idx];
    const char *body = c->carry + head_len;
    const char *r = strstr(body, "retry: ");
    int retry_ms = r ? atoi(r + 7) : 3000;
    const char *st = strstr(body, "\"status\"");
    int status = 0;
    if (st) { st += 8; while (*st == ':' || *st == ' ') st++; status = atoi(st); }
    wait_statuses[status > 0 && status < 600 ? status : 0]++;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = CLOSED; c->carried = 0; c->wait_len = 0;
    if (++c->waits > MAX_WAITS) { c->why = NEVER_UP; waits_gave_up++; return; }
    c->why = 0;
    long pos = (rq_head + rq_len) % rq_cap;
    rq[pos] = idx; rq_due[pos] = now_mono() + retry_ms / 1000.0; rq_len++;
}

static void give_up(long idx) {
    epoll_ctl(ep, EPOLL_CTL_DEL, conns[idx].fd, NULL);
    close(conns[idx].fd);
    refused(idx);
}

static void open_conn(long idx) {
    conn_t *c = &conns[idx];
    c->status = 0; c->carried = 0; c->why = 0; c->state = CONNECTING; c->wait_len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { connect_error(errno); refused(idx); return; }
    if (nsources) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&sources[idx % nsources], sizeof sources[0]) < 0) {
            connect_error(errno); close(c->fd); refused(idx); return;
        }
    }
    c->started = now_mono();
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) { connect_error(errno); close(c->fd); refused(idx); return; }
    struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    inflight++;
}

static char scan_buf[CARRY + 65536 + 1];

/* One frame (NUL-terminated, without its blank line), line by line: retry:, event: and the data's "ts". */
static void frame_done(char *p, double wall) {
    int is_error = 0, skip = 0;
    char *data = NULL;
    while (*p) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        if (!strncmp(p, "retry:", 6)) retry_frames++;
        else if (!strncmp(p, "event: ", 7)) {
            const char *name = p + 7;
            if (!strcmp(name, "error")) is_error = 1;
            else if (!strcmp(name, "snapshot") || !strcmp(name, "resumed")) skip = 1;
        } else if (!data && !strncmp(p, "data:", 5)) data = p + 5;
        if (!nl) break;
        p = nl + 1;
    }
    if (is_error) error_frames++;
    if (data && !skip) {
        char *ts = strstr(data, "\"ts\":");
        if (ts) {
            double t = strtod(ts + 5, NULL);
            if (t > 0) { res_add(&event_lat, wall - t); events++; last_event_at = now_mono(); }
        }
    }
}

static void scan_frames(conn_t *c, const char *data, int len) {
    /* frames end with "\n\n"; keep the unfinished tail in carry */
    int total = c->carried + len;
    char *buf = scan_buf;
    if (total > (int)sizeof scan_buf - 1) buf = malloc(total + 1);
    memcpy(buf, c->carry, c->carried);
    memcpy(buf + c->carried, data, len);
    buf[total] = 0;
    char *p = buf, *end;
    double wall = now_wall();
    while ((end = memmem(p, buf + total - p, "\n\n", 2)) != NULL) {
        *end = 0;
        frame_done(p, wall);
        p = end + 2;
    }
    int rest = (int)(buf + total - p);
    if (rest > CARRY) { p = buf + total - CARRY; rest = CARRY; } /* an oversize frame: keep its tail */
    memmove(c->carry, p, rest);
    c->carried = rest;
    if (buf != scan_buf) free(buf);
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser: the runner computes the same */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The number after `key` and a colon (spaces allowed, a backslash-escaped quote too), within [p, end). */
static const char *after_key(const char *p, const char *end, const char *key, size_t klen) {
    for (const char *k; (k = memmem(p, end - p, key, klen)) != NULL; p = k) {
        k += klen;
        while (k < end && (*k == '\\' || *k == '"')) k++;
        while (k < end && *k == ' ') k++;
        if (k >= end) return NULL;
        if (*k != ':') continue; /* another key that begins the same way */
        k++;
        while (k < end && *k == ' ') k++;
        return k;
    }
    return NULL;
}

/* Log mode: rows as they arrive. A row starts at `{"id":`; it is counted once its "ins" number is
 * complete (a character that ends a number follows it). What may hold an unfinished row is carried. */
static void scan_rows(conn_t *c, const char *data, int len) {
    int total = c->carried + len;
    char *buf = scan_buf;
    if (total > (int)sizeof scan_buf - 1) buf = malloc(total + 1);
    memcpy(buf, c->carry, c->carried);
    memcpy(buf + c->carried, data, len);
    buf[total] = 0;
    const char *end = buf + total, *p = buf, *keep = NULL;
    double wall = now_wall();
    for (;;) {
        const char *row = memmem(p, end - p, "{\"id\":", 6);
        if (!row) break;
        const char *num = row + 6;
        while (num < end && *num == ' ') num++;
        const char *next = memmem(num, end - num, "{\"id\":", 6); /* the next row bounds this one */
        const char *limit = next ? next : end;
        const char *ins = after_key(num, limit, "\"ins", 4);
        const char *stop = ins;
        while (stop && stop < limit && (isdigit((unsigned char)*stop) || *stop == '.' || *stop == 'e' || *stop == 'E' || *stop == '-' || *stop == '+')) stop++;
        if (!ins || stop >= limit) {
            if (!next) { keep = row; break; } /* unfinished: wait for the rest */
            p = next; /* a row without "ins" (not one of the bench's): not counted */
            continue;
        }
        char *idend;
        long long id = strtoll(num, &idend, 10);
        double t = strtod(ins, NULL);
        if (idend != num && id >= logs_min_id) {
            if (c->rows && id <= c->last_id) c->disorder++;
            c->last_id = id;
            c->rows++;
            c->id_sum += (uint64_t)id;
            c->id_mix += mix64((uint64_t)id);
            res_add(&event_lat, wall - t);
            events++;
            last_event_at = now_mono();
        }
        p = stop;
    }
    /* carry the unfinished row, or else the last few bytes (a marker split between reads) */
    int rest;
    const char *from;
    if (keep) { from = keep; rest = (int)(end - keep); }
    else { from = end - 16 > p ? end - 16 : p; rest = (int)(end - from); }
    if (rest > CARRY) { from = end - CARRY; rest = CARRY; } /* cannot happen with the bench's rows */
    memmove(c->carry, from, rest);
    c->carried = rest;
    if (buf != scan_buf) free(buf);
}

static void scan(conn_t *c, const char *data, int len) {
    if (logs_mode) scan_rows(c, data, len);
    else scan_frames(c, data, len);
}

static int parse_sources(const char *arg, struct sockaddr_in *out) {
    int n = 0;
    if (!arg || !*arg || !strcmp(arg, "-")) return 0;
    char *copy = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && n < MAX_SOURCES; tok = strtok_r(NULL, ",", &save)) {
        memset(&out[n], 0, sizeof out[n]);
        out[n].sin_family = AF_INET;
        if (inet_pton(AF_INET, tok, &out[n].sin_addr) != 1) { fprintf(stderr, "bad source address %s\n", tok); exit(2); }
        n++;
    }
    free(copy);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: %s HOST PORT PATHS_FILE COUNT SECONDS [RAMP_PER_S] [SOURCES] [RETRIES]\n", argv[0]); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    long count = atol(argv[4]);
    double hold = atof(argv[5]);
    double ramp = argc > 6 ? atof(argv[6]) : 0;
    nsources = parse_sources(argc > 7 ? argv[7] : NULL, sources);
    retries = argc > 8 ? atol(argv[8]) : 0;

    FILE *f = fopen(argv[3], "r");
    if (!f) { perror("paths"); return 2; }
    char **paths = NULL; long npaths = 0; char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        paths = realloc(paths, sizeof(char *) * (npaths + 1));
        paths[npaths++] = strdup(line);
    }
    fclose(f);
    if (!npaths) { fprintf(stderr, "no paths\n"); return 2; }

    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    if ((long)rl.rlim_cur < count + 64)
        fprintf(stderr, "loadgen: open-files limit %ld is below %ld streams\n", (long)rl.rlim_cur, count);
    signal(SIGTERM, on_stop); signal(SIGINT, on_stop); signal(SIGUSR1, on_reset); signal(SIGUSR2, on_mark);
    signal(SIGPIPE, SIG_IGN);
    headers_lat.v = malloc(sizeof(double) * SAMPLES);
    event_lat.v = malloc(sizeof(double) * SAMPLES);

    addr.sin_family = AF_INET; addr.sin_port = htons(port); inet_pton(AF_INET, host, &addr.sin_addr);
    ep = epoll_create1(0);
    conns = calloc(count, sizeof(conn_t));
    rq_cap = count; rq = calloc(count, sizeof(long)); rq_due = calloc(count, sizeof(double));
    long opened = 0;
    double t0 = now_mono(), all_up_at = 0, last_up = 0;
    run_began = t0;
    if (getenv("LOADGEN_CONNECT_LOG")) connect_log = fopen(getenv("LOADGEN_CONNECT_LOG"), "w");
    if (getenv("LOADGEN_LOGS")) { logs_mode = 1; logs_min_id = atoll(getenv("LOADGEN_LOGS")); }
    if (getenv("LOADGEN_QUIET")) QUIET = atof(getenv("LOADGEN_QUIET"));
    struct epoll_event evs[1024];
    char rbuf[65536];


    while (!stop_flag) {
        double t = now_mono();
        if (reset_flag) {
            reset_flag = 0; events = 0; retry_frames = 0; error_frames = 0; event_lat.n = event_lat.seen = 0;
            for (long i = 0; i < count; i++) { conns[i].rows = conns[i].disorder = 0; conns[i].id_sum = conns[i].id_mix = 0; }
        }
        if (mark_flag) { mark_flag = 0; events_at_mark = events; mark_at = now_mono(); }
        /* open connections again whose retry is due, then new ones */
        while (rq_len && inflight < 256 && rq_due[rq_head] <= t) {
            long idx = rq[rq_head];
            rq_head = (rq_head + 1) % rq_cap; rq_len--;
            open_conn(idx);
        }
        while (opened < count && inflight < 256 && (ramp <= 0 || opened < (t - t0) * ramp + 1)) open_conn(opened++);
        if (!all_up_at && opened == count && inflight == 0 && rq_len == 0) {
            all_up_at = now_mono();
            fprintf(stderr, "READY up=%ld\n", up);
            fflush(stderr);
        }
        if (mark_at && !drained && now_mono() - (last_event_at > mark_at ? last_event_at : mark_at) >= QUIET) {
            drained = 1;
            fprintf(stderr, "DRAINED after=%ld\n", events - events_at_mark);
            fflush(stderr);
        }
        if (all_up_at && now_mono() - all_up_at >= hold) break;
        int n = epoll_wait(ep, evs, 1024, 20);
        for (int i = 0; i < n; i++) {
            long idx = (long)evs[i].data.u64;
            conn_t *c = &conns[idx];
            if (c->state == CLOSED) continue;
            if (c->state == CONNECTING && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0; socklen_t l = sizeof err; getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || !(evs[i].events & EPOLLOUT)) { connect_error(err); inflight--; give_up(idx); continue; }
                const char *path = paths[evs[i].data.u64 % npaths];
                char req[8192];
                int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n", path, host, port);
                if (write(c->fd, req, len) != len) { connect_error(errno); inflight--; give_up(idx); continue; }
                c->state = SENT;
                struct epoll_event e = {.events = EPOLLIN, .data.u64 = evs[i].data.u64};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
                    if (r > 0) {
                        bytes_in += r;
                        if (c->state == SENT) {
                            /* the response head, possibly over several reads */
                            int room = CARRY - 1 - c->carried;
                            int take = r < room ? (int)r : room;
                            memcpy(c->carry + c->carried, rbuf, take);
                            c->carried += take;
                            c->carry[c->carried] = 0;
                            char *h = memmem(c->carry, c->carried, "\r\n\r\n", 4);
                            if (!h) {
                                if (c->carried >= CARRY - 1) { failed_headers++; inflight--; give_up(idx); break; }
                                continue;
                            }
                            int head_len = (int)(h + 4 - c->carry);
                            c->status = c->carried > 12 ? atoi(c->carry + 9) : 0;
                            if (c->status == 200 && !c->wait_len) {
                                /* Content-Length on a 200: the "retry later" answer; wait for its body */
                                for (char *line = strstr(c->carry, "\r\n"); line && line < h; line = strstr(line + 2, "\r\n"))
                                    if (!strncasecmp(line + 2, "content-length:", 15)) {
                                        c->wait_len = head_len + atoi(line + 17);
                                        if (c->wait_len >= CARRY - 1) c->wait_len = CARRY - 2;
                                        break;
                                    }
                            }
                            if (c->wait_len) {
                                if (c->carried < c->wait_len) continue;
                                inflight--;
                                waited(idx, head_len);
                                break;
                            }
                            inflight--;
                            statuses[c->status > 0 && c->status < 600 ? c->status : 0]++;
                            res_add(&headers_lat, now_mono() - c->started);
                            if (connect_log) fprintf(connect_log, "%ld %.6f %.6f %d\n", idx, c->started - run_began, now_mono() - c->started, c->status);
                            if (c->status != 200) { non200++; give_up(idx); break; }
                            c->state = STREAMING; up++; c->waits = 0;
                            last_up = now_mono();
                            /* what followed the head in these reads (the opening keepalive, a snapshot...) */
                            int rest = c->carried - head_len;
                            char tail[CARRY];
                            memcpy(tail, c->carry + head_len, rest);
                            c->carried = 0;
                            if (rest > 0) scan(c, tail, rest);
                            if (take < r) scan(c, rbuf + take, (int)(r - take)); /* what did not fit */
                            continue;
                        }
                        scan(c, rbuf, (int)r);
                        continue;
                    }
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                        if (c->state == SENT) { failed_headers++; inflight--; give_up(idx); }
                        else {
                            closed_early++; up--;
                            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->state = CLOSED; c->why = CLOSED_EARLY;
                        }
                    }
                    break;
                }
            }
        }
    }
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    qsort(headers_lat.v, headers_lat.n, sizeof(double), cmp);
    qsort(event_lat.v, event_lat.n, sizeof(double), cmp);
    double end = now_mono();
    long unresolved = 0, never = 0; /* not settled when the run ended (connecting, or waiting to retry) */
    for (long i = 0; i < count; i++) {
        if (i >= opened || conns[i].state == CONNECTING || conns[i].state == SENT || (conns[i].state == CLOSED && !conns[i].why))
            unresolved++;
        if (i >= opened || (conns[i].state != STREAMING && conns[i].why != CLOSED_EARLY)) never++;
    }
    printf("{\"requested\":%ld,\"up\":%ld,\"failed\":%ld,\"failed_connect\":%ld,\"failed_headers\":%ld,\"non200\":%ld,"
           "\"retried\":%ld,\"unresolved\":%ld,\"closed_early\":%ld,"
           "\"connect_seconds\":%.3f,\"headers_p50_ms\":%.2f,\"headers_p99_ms\":%.2f,\"headers_max_ms\":%.2f,"
           "\"events\":%ld,\"latency_p50_ms\":%.2f,\"latency_p99_ms\":%.2f,\"latency_max_ms\":%.2f,"
           "\"events_after_mark\":%ld,\"last_event_after_mark_ms\":%.1f,\"mark_to_end_ms\":%.1f,"
           "\"retry_frames\":%ld,\"error_frames\":%ld,\"bytes\":%ld,\"cpu_seconds\":%.3f,",
           count, up, never, failed_connect, failed_headers, non200, retried, unresolved, closed_early,
           (last_up ? last_up : now_mono()) - t0,
           pct(&headers_lat, 0.5) * 1e3, pct(&headers_lat, 0.99) * 1e3, headers_lat.n ? headers_lat.v[headers_lat.n - 1] * 1e3 : 0,
           events, pct(&event_lat, 0.5) * 1e3, pct(&event_lat, 0.99) * 1e3, event_lat.n ? event_lat.v[event_lat.n - 1] * 1e3 : 0,
           events_at_mark < 0 ? 0 : events - events_at_mark,
           mark_at && last_event_at > mark_at ? (last_event_at - mark_at) * 1e3 : 0.0,
           mark_at ? (end - mark_at) * 1e3 : 0.0,
           retry_frames, error_frames, bytes_in, cpu);
    printf("\"statuses\":{");
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (statuses[s]) { printf("%s\"%d\":%ld", first ? "" : ",", s, statuses[s]); first = 0; }
    for (int s = 0; s < 600; s++)
        if (wait_statuses[s]) { printf("%s\"wait_%d\":%ld", first ? "" : ",", s, wait_statuses[s]); first = 0; }
    if (waits_gave_up) { printf("%s\"wait_gave_up\":%ld", first ? "" : ",", waits_gave_up); first = 0; }
    printf("},\"connect_errors\":{");
    first = 1;
    for (int e = 0; e <= MAX_ERRNO; e++) {
        if (!connect_errors[e]) continue;
        const char *name = errno_name(e);
        if (name) printf("%s\"%s\":%ld", first ? "" : ",", name, connect_errors[e]);
        else printf("%s\"E%d\":%ld", first ? "" : ",", e, connect_errors[e]);
        first = 0;
    }
    /* which connections are not streaming at the end, by index into this run (for exact expectations) */
    printf("},\"never_up\":[");
    first = 1;
    for (long i = 0; i < count; i++)
        if (i >= opened || (conns[i].state != STREAMING && conns[i].why != CLOSED_EARLY)) {
            printf("%s%ld", first ? "" : ",", i); first = 0;
        }
    printf("],\"closed_early_idx\":[");
    first = 1;
    for (long i = 0; i < opened; i++)
        if (conns[i].why == CLOSED_EARLY) { printf("%s%ld", first ? "" : ",", i); first = 0; }
    printf("]");
    if (logs_mode) {
        printf(",\"logs\":[");
        for (long i = 0; i < count; i++)
            printf("%s[%ld,%llu,%llu,%ld]", i ? "," : "", conns[i].rows, (unsigned long long)conns[i].id_sum,
                   (unsigned long long)conns[i].id_mix, conns[i].disorder);
        printf("]");
    }
    printf("}\n");
    if (connect_log) fclose(connect_log);
    return 0;
}
