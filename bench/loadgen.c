/* lurestream load generator: holds many SSE streams with one epoll loop and measures
 *   - connect -> response headers latency (and status codes),
 *   - delivery latency of each live event: now - the envelope "ts" (publisher's clock, same host),
 * without becoming the bottleneck (reports its own CPU time).
 *
 *   loadgen HOST PORT PATHS_FILE COUNT SECONDS [RAMP_PER_S]
 *
 * PATHS_FILE: one request path per line (with its ?token= or ?ticket=), used round-robin.
 * Connects COUNT streams (at most RAMP_PER_S new connections per second, 0 = as fast as possible,
 * at most 256 connects in flight), keeps them SECONDS after the last one is up, then prints one JSON
 * object on stdout. SIGUSR1 resets the event counters (the runner sends it when the load starts);
 * SIGTERM/SIGINT end the run early.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CARRY 8192
#define SAMPLES 1000000

typedef struct {
    int fd;
    int state; /* 0 connecting, 1 sent, 2 streaming, 3 closed */
    double started;
    int status;
    char carry[CARRY];
    int carried;
} conn_t;

static volatile sig_atomic_t stop_flag = 0, reset_flag = 0;
static void on_stop(int s) { (void)s; stop_flag = 1; }
static void on_reset(int s) { (void)s; reset_flag = 1; }

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
static long events = 0, bytes_in = 0, closed_early = 0, failed = 0, up = 0, non200 = 0;

static void scan_frames(conn_t *c, const char *data, int len) {
    /* frames end with "\n\n"; keep the unfinished tail in carry */
    int total = c->carried + len;
    char *buf = malloc(total + 1);
    memcpy(buf, c->carry, c->carried);
    memcpy(buf + c->carried, data, len);
    buf[total] = 0;
    char *p = buf, *end;
    double wall = now_wall();
    while ((end = strstr(p, "\n\n")) != NULL) {
        *end = 0;
        if (strstr(p, "data:") && !strstr(p, "event: snapshot") && !strstr(p, "event: resumed")) {
            char *ts = strstr(p, "\"ts\":");
            if (ts) {
                double t = strtod(ts + 5, NULL);
                if (t > 0) { res_add(&event_lat, wall - t); events++; }
            }
        }
        p = end + 2;
    }
    int rest = (int)(buf + total - p);
    if (rest > CARRY) { p = buf + total - CARRY; rest = CARRY; } /* an oversize frame: keep its tail */
    memmove(c->carry, p, rest);
    c->carried = rest;
    free(buf);
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: %s HOST PORT PATHS_FILE COUNT SECONDS [RAMP_PER_S]\n", argv[0]); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    long count = atol(argv[4]);
    double hold = atof(argv[5]);
    double ramp = argc > 6 ? atof(argv[6]) : 0;

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
    signal(SIGTERM, on_stop); signal(SIGINT, on_stop); signal(SIGUSR1, on_reset); signal(SIGPIPE, SIG_IGN);
    headers_lat.v = malloc(sizeof(double) * SAMPLES);
    event_lat.v = malloc(sizeof(double) * SAMPLES);

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET; addr.sin_port = htons(port); inet_pton(AF_INET, host, &addr.sin_addr);
    int ep = epoll_create1(0);
    conn_t *conns = calloc(count, sizeof(conn_t));
    long opened = 0, inflight = 0;
    double t0 = now_mono(), all_up_at = 0, last_up = 0;
    struct epoll_event evs[1024];
    char rbuf[65536];

    while (!stop_flag) {
        double t = now_mono();
        if (reset_flag) { reset_flag = 0; events = 0; event_lat.n = event_lat.seen = 0; }
        /* open more connections */
        while (opened < count && inflight < 256 && (ramp <= 0 || opened < (t - t0) * ramp + 1)) {
            conn_t *c = &conns[opened];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) { failed++; c->state = 3; opened++; continue; }
            c->started = now_mono();
            int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
            if (r < 0 && errno != EINPROGRESS) { failed++; close(c->fd); c->state = 3; opened++; continue; }
            struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)opened};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
            opened++; inflight++;
        }
        if (!all_up_at && opened == count && inflight == 0) { all_up_at = now_mono(); }
        if (all_up_at && now_mono() - all_up_at >= hold) break;
        int n = epoll_wait(ep, evs, 1024, 20);
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u64];
            if (c->state == 0 && (evs[i].events & EPOLLOUT)) {
                int err = 0; socklen_t l = sizeof err; getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) { failed++; inflight--; close(c->fd); c->state = 3; continue; }
                const char *path = paths[evs[i].data.u64 % npaths];
                char req[8192];
                int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n", path, host, port);
                if (write(c->fd, req, len) != len) { failed++; inflight--; close(c->fd); c->state = 3; continue; }
                c->state = 1;
                struct epoll_event e = {.events = EPOLLIN, .data.u64 = evs[i].data.u64};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
                    if (r > 0) {
                        bytes_in += r;
                        int off = 0;
                        if (c->state == 1) {
                            /* headers: status line first */
                            if (!c->status && r > 12) c->status = atoi(rbuf + 9);
                            char *h = memmem(rbuf, r, "\r\n\r\n", 4);
                            if (!h) continue;
                            off = (int)(h + 4 - rbuf);
                            c->state = 2; inflight--; up++;
                            last_up = now_mono();
                            res_add(&headers_lat, last_up - c->started);
                            if (c->status != 200) non200++;
                        }
                        if (r - off > 0) scan_frames(c, rbuf + off, (int)(r - off));
                        continue;
                    }
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                        if (c->state == 1) { failed++; inflight--; } else if (c->state == 2) { closed_early++; up--; }
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        close(c->fd); c->state = 3;
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
    printf("{\"requested\":%ld,\"up\":%ld,\"failed\":%ld,\"non200\":%ld,\"closed_early\":%ld,"
           "\"connect_seconds\":%.3f,\"headers_p50_ms\":%.2f,\"headers_p99_ms\":%.2f,\"headers_max_ms\":%.2f,"
           "\"events\":%ld,\"latency_p50_ms\":%.2f,\"latency_p99_ms\":%.2f,\"latency_max_ms\":%.2f,"
           "\"bytes\":%ld,\"cpu_seconds\":%.3f}\n",
           count, up, failed, non200, closed_early, (last_up ? last_up : now_mono()) - t0,
           pct(&headers_lat, 0.5) * 1e3, pct(&headers_lat, 0.99) * 1e3, headers_lat.n ? headers_lat.v[headers_lat.n - 1] * 1e3 : 0,
           events, pct(&event_lat, 0.5) * 1e3, pct(&event_lat, 0.99) * 1e3, event_lat.n ? event_lat.v[event_lat.n - 1] * 1e3 : 0,
           bytes_in, cpu);
    return 0;
}
