/* lurestream cluster load generator: many SSE streams over several hosts, each reconnecting on its own
 * with Last-Event-ID the way EventSource does, recording every event id it receives.
 *
 *   cluster_loadgen HOSTS PORT PATHS_FILE COUNT RECORDS_OUT [RAMP_PER_S] [KEEPALIVE_S] [MAX_INFLIGHT] [GROUP]
 *                   [BLIP_MS]
 *
 * HOSTS: comma-separated IPv4 addresses of the lurestream hosts (all listening on PORT).
 * PATHS_FILE: one request path per line (with its ?token=); stream i uses line i % lines.
 * Stream i first connects to HOSTS[(i / GROUP) % n] (GROUP default 1: HOSTS[i % n]; 5 with 5 streams per
 * user puts each user's streams on one host), at most RAMP_PER_S new streams per second (0 = no limit),
 * at most MAX_INFLIGHT (default 512) connects waiting for their response head at any time.
 *
 * Per stream, like a browser's EventSource behind a load balancer:
 * - every `id:` (events, the snapshot, keepalives) becomes its Last-Event-ID, kept as the string received
 *   (`<epoch>-<sequence>`) and sent back verbatim on each reconnect; where a number is needed (records,
 *   IDS) it is the sequence after the last '-', and the epoch (the text before it) is recorded as an index
 *   into the run's table of epochs seen (the JSON summary's "epochs");
 * - `retry: N` sets its reconnect delay (default 3000 ms);
 * - when the server ends the stream (a drain, a lagging close) it waits that delay and connects to
 *   another host, picked at random;
 * - when a host refuses the connection (refused, reset, no response head within 10 s) it tries the
 *   next host at once, backing off (0.1 s doubling to 2 s) only after every host has refused in a
 *   row; an HTTP error (429, 503) backs off like README's readEvents (the retry delay doubling per
 *   failure, at most 30 s, ±25 %) and then tries the next host;
 * - "retry later" (a refusal that clears on its own, answered to `Accept: text/event-stream` as a 200 with
 *   Content-Length: `retry: N`, `event: unavailable` with {"status": 429|503, ...}, then the end of the
 *   response): never a stream; counted as wait_<status>, the `retry:` becomes its reconnect delay (as in
 *   EventSource) and it connects again to the same host after N ms;
 * - 3 keepalive periods (KEEPALIVE_S, default 15) without a byte: the connection is dead, reconnect.
 * A blip (SIGUSR2, for the fault bench): the k-th one (k from 0) closes every open stream i with
 * i % 3 == k % 3 on the client's side, as a network blip would; each connects again (same host, its
 * Last-Event-ID) after BLIP_MS[k % n] ms (BLIP_MS: comma-separated, default 500).
 *
 * RECORDS_OUT gets fixed 32-byte little-endian records (struct rec below), written at the end. `epoch` is
 * 0 for no id, else 1 + the index of the id's epoch in the summary's "epochs"; `seq` an id's sequence:
 *   type 1 EVENT    conn, seq/epoch = event id, t1 = envelope ts, t2 = arrival (wall), flags bit 0 = replayed
 *   type 2 SESSION  conn, host, seq/epoch = the Last-Event-ID sent (-1: none), t1 = connect started,
 *                   t2 = response head (wall) — a 200 that is a stream
 *   type 3 OPENING  conn, flags = 0 first snapshot, 1 resumed, 2 snapshot "resumed":false, 3 other
 *                   snapshot, 4 error/end frame; seq/epoch = the snapshot id, or the number replayed
 *   type 4 END      conn, host, t1 = wall, flags = 0 server ended it, 1 silence, 2 read error, 3 a blip
 *   type 5 REFUSED  conn, host, t1 = wall, flags = 0 refused/reset, 1 timeout, 2 HTTP status (seq),
 *                   3 "retry later" (seq = its status, t2 = its retry ms)
 * SIGTERM/SIGINT end the run: records written, one JSON summary on stdout. Every 2 s a STATUS line goes
 * to stderr; once every stream has opened once, "READY up=N"; on SIGUSR1, "IDS streaming=N min=M
 * epoch=E behind=B" (M: the lowest Last-Event-ID sequence over the streams whose last id is of the newest
 * epoch seen, E (1-based; 0 none yet); B: streams whose last id is of another epoch, or none).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
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

#define MAX_HOSTS 16
#define BUF 8192
#define HEAD_TIMEOUT 10.0
#define ID_MAX 48
#define MAX_EPOCHS 250

enum { WAITING, CONNECTING, SENT, WAITBODY, STREAMING };
enum { R_EVENT = 1, R_SESSION, R_OPENING, R_END, R_REFUSED };

#pragma pack(push, 1)
typedef struct {
    uint8_t type, flags, host, epoch;
    uint32_t conn;
    int64_t seq;
    double t1, t2;
} rec_t;
#pragma pack(pop)

typedef struct {
    int fd, state, host, retry_ms, refused_row, http_failures, replay_left, chunk_left, sizelen, len, body_left;
    char sent_id[ID_MAX]; /* the Last-Event-ID of the request in flight ("": none) */
    char last_id[ID_MAX]; /* the last id received, verbatim ("": none yet) */
    long long last_seq, first_id; /* the sequence of last_id (-1: none); of the first snapshot */
    int last_epoch; /* the epoch of last_id: 0 none, else 1 + its index in epochs[] */
    double next_at, last_rx, started_mono, started_wall;
    char sizeline[20];
    char *buf;
} conn_t;

static volatile sig_atomic_t stop_flag = 0, ids_flag = 0, blip_flag = 0;
static int blips, nblip_ms = 0;
static double blip_ms[16];
static void on_stop(int s) { (void)s; stop_flag = 1; }
static void on_ids(int s) { (void)s; ids_flag = 1; }
static void on_blip(int s) { (void)s; blip_flag = 1; }
static double mono(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double wall(void) { struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static rec_t *recs; static long nrecs, caprecs;
static void rec(int type, int flags, int host, int epoch, long conn, long long seq, double t1, double t2) {
    if (nrecs == caprecs) { caprecs = caprecs ? caprecs * 2 : 1 << 16; recs = realloc(recs, caprecs * sizeof(rec_t)); }
    rec_t *r = &recs[nrecs++];
    r->type = type; r->flags = flags; r->host = (uint8_t)host; r->epoch = (uint8_t)epoch; r->conn = (uint32_t)conn;
    r->seq = seq; r->t1 = t1; r->t2 = t2;
}

/* ids are "<epoch>-<sequence>": the epochs seen, in the order first seen (an id without '-': no epoch) */
static char epochs[MAX_EPOCHS][ID_MAX];
static int nepochs;
static int epoch_of(const char *id) {
    const char *dash = strrchr(id, '-');
    if (!dash) return 0;
    int len = (int)(dash - id);
    if (len >= ID_MAX) len = ID_MAX - 1;
    for (int k = 0; k < nepochs; k++)
        if ((int)strlen(epochs[k]) == len && !strncmp(epochs[k], id, len)) return k + 1;
    if (nepochs == MAX_EPOCHS) return MAX_EPOCHS;
    memcpy(epochs[nepochs], id, len);
    epochs[nepochs][len] = 0;
    fprintf(stderr, "EPOCH %d %s\n", nepochs + 1, epochs[nepochs]);
    return ++nepochs;
}
static long long seq_of(const char *id) {
    if (!*id) return -1;
    const char *dash = strrchr(id, '-');
    return strtoll(dash ? dash + 1 : id, NULL, 10);
}

static struct sockaddr_in hosts[MAX_HOSTS];
static char host_names[MAX_HOSTS][32];
static int nhosts, port, ep;
static char **paths; static long npaths;
static conn_t *conns; static long count;
static long inflight, streaming, events, sessions, refusals, opened_once, rebuilt, waits;
static long wait_status[600];
static double dead_after;

static void close_fd(conn_t *c) {
    if (c->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; }
}

/* a connect that did not become a stream. Refused, reset or no head in time (a host down or going
 * away: what a load balancer redispatches): the next host at once, backing off (0.1 s doubling to 2 s)
 * only once every host has refused in a row. An HTTP error (429, 503): the client's back-off, the
 * retry delay doubling per failure up to 30 s, jittered ±25 % (README's readEvents), on the next host. */
static void refused(conn_t *c, long i, int why, int status) {
    if (c->state == CONNECTING || c->state == SENT || c->state == WAITBODY) inflight--;
    close_fd(c);
    rec(R_REFUSED, why, c->host, 0, i, status, wall(), 0);
    refusals++;
    c->state = WAITING;
    c->host = (c->host + 1) % nhosts;
    double delay = 0;
    if (status) {
        c->http_failures++;
        int k = c->http_failures - 1 < 10 ? c->http_failures - 1 : 10;
        delay = c->retry_ms / 1000.0 * (1 << k);
        if (delay > 30.0) delay = 30.0;
        delay *= 0.75 + (random() % 1000) / 2000.0;
    } else if (++c->refused_row >= nhosts) {
        int k = c->refused_row - nhosts < 5 ? c->refused_row - nhosts : 5;
        delay = 0.1 * (1 << k);
        if (delay > 2.0) delay = 2.0;
    }
    c->next_at = mono() + delay;
}

/* a stream ended: wait the retry hint (not after silence) and go to another host */
static void ended(conn_t *c, long i, int why) {
    close_fd(c);
    rec(R_END, why, c->host, 0, i, 0, wall(), 0);
    streaming--;
    c->state = WAITING;
    if (nhosts > 1) c->host = (c->host + 1 + (int)(random() % (nhosts - 1))) % nhosts;
    c->next_at = mono() + (why == 1 ? 0 : c->retry_ms / 1000.0);
}

static void start_connect(conn_t *c, long i) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { c->state = CONNECTING; inflight++; refused(c, i, 0, 0); return; }
    c->state = CONNECTING; inflight++;
    c->started_mono = mono(); c->started_wall = wall();
    int r = connect(c->fd, (struct sockaddr *)&hosts[c->host], sizeof hosts[0]);
    if (r < 0 && errno != EINPROGRESS) { refused(c, i, 0, 0); return; }
    struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static void send_request(conn_t *c, long i) {
    char req[8192], idh[96] = "";
    if (c->last_id[0]) snprintf(idh, sizeof idh, "Last-Event-ID: %s\r\n", c->last_id);
    memcpy(c->sent_id, c->last_id, ID_MAX);
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n%s\r\n",
                       paths[i % npaths], host_names[c->host], port, idh);
    if (write(c->fd, req, len) != len) { refused(c, i, 0, 0); return; }
    c->state = SENT; c->len = 0;
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static long long json_int(const char *s, const char *key) {
    const char *p = strstr(s, key);
    if (!p) return -1;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    return strtoll(p, NULL, 10);
}

static void frame(conn_t *c, long i, char *f) {
    char *event = NULL, *data = NULL;
    long long id = -1;
    int epoch = 0;
    for (char *line = f, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!strncmp(line, "id: ", 4)) {
            snprintf(c->last_id, ID_MAX, "%s", line + 4); /* kept verbatim: it goes back as Last-Event-ID */
            id = c->last_seq = seq_of(c->last_id);
            epoch = c->last_epoch = epoch_of(c->last_id);
        } else if (!strncmp(line, "retry: ", 7)) c->retry_ms = atoi(line + 7);
        else if (!strncmp(line, "event: ", 7)) event = line + 7;
        else if (!strncmp(line, "data: ", 6)) data = line + 6;
    }
    if (!data) return; /* a keepalive */
    double now = wall();
    if (event && !strcmp(event, "snapshot")) {
        int kind = 3;
        if (c->first_id < 0) { c->first_id = id; kind = 0; opened_once++; }
        else if (strstr(data, "\"resumed\":false")) { kind = 2; rebuilt++; }
        rec(R_OPENING, kind, c->host, epoch, i, id, now, 0);
    } else if (event && !strcmp(event, "resumed")) {
        c->replay_left = (int)json_int(data, "\"replayed\"");
        rec(R_OPENING, 1, c->host, c->last_epoch, i, c->replay_left, now, 0);
    } else if (event && (!strcmp(event, "error") || !strcmp(event, "end"))) {
        rec(R_OPENING, 4, c->host, 0, i, -1, now, 0);
    } else {
        char *ts = strstr(data, "\"ts\":");
        rec(R_EVENT, c->replay_left > 0, c->host, epoch, i, id, ts ? strtod(ts + 5, NULL) : 0, now);
        if (c->replay_left > 0) c->replay_left--;
        events++;
    }
}

/* the chunked body: size line, data, CRLF; frames end with a blank line */
static int body(conn_t *c, long i, const char *p, int n) {
    while (n > 0) {
        if (c->chunk_left > 0) {
            int take = n < c->chunk_left ? n : c->chunk_left;
            if (c->len + take >= BUF - 1) { c->len = 0; } /* an oversize frame: not ours to measure */
            memcpy(c->buf + c->len, p, take);
            c->len += take; c->buf[c->len] = 0;
            p += take; n -= take; c->chunk_left -= take;
            if (!c->chunk_left) c->chunk_left = -2;
            char *start = c->buf, *end;
            while ((end = strstr(start, "\n\n")) != NULL) {
                *end = 0;
                frame(c, i, start);
                start = end + 2;
            }
            c->len -= (int)(start - c->buf);
            memmove(c->buf, start, c->len + 1);
        } else if (c->chunk_left <= -2) {
            c->chunk_left = c->chunk_left == -2 ? -3 : -1;
            p++; n--;
        } else {
            char ch = *p++; n--;
            if (ch == '\n') {
                c->sizeline[c->sizelen] = 0;
                long size = strtol(c->sizeline, NULL, 16);
                c->sizelen = 0;
                if (size == 0) return 1; /* the last chunk: the server ended the response */
                c->chunk_left = (int)size;
            } else if (ch != '\r' && c->sizelen < 18) c->sizeline[c->sizelen++] = ch;
        }
    }
    return 0;
}

/* a header's value as a number, or -1 when the head lacks it (name: lowercase, with the colon) */
static long header_number(const char *head, int len, const char *name) {
    int nl = (int)strlen(name);
    for (const char *line = head; line && line < head + len; ) {
        const char *eol = strstr(line, "\r\n");
        if (!eol) break;
        if (eol - line > nl && !strncasecmp(line, name, nl)) return strtol(line + nl, NULL, 10);
        line = eol + 2;
    }
    return -1;
}

/* the "retry later" answer is complete (its body in c->buf): wait its retry: and connect again, same host */
static void waited(conn_t *c, long i) {
    char *r = strstr(c->buf, "retry: ");
    int retry = r ? atoi(r + 7) : c->retry_ms;
    long long status = json_int(c->buf, "\"status\"");
    inflight--;
    close_fd(c);
    waits++;
    wait_status[status > 0 && status < 600 ? status : 0]++;
    rec(R_REFUSED, 3, c->host, 0, i, status, wall(), retry);
    if (retry > 0) c->retry_ms = retry; /* as EventSource: the field sets its reconnection time */
    c->state = WAITING; c->refused_row = 0; c->len = 0; c->buf[0] = 0;
    c->next_at = mono() + retry / 1000.0;
}

static void readable(conn_t *c, long i) {
    char rbuf[65536];
    for (;;) {
        ssize_t r = read(c->fd, rbuf, sizeof rbuf);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r <= 0) {
            if (c->state == SENT || c->state == WAITBODY) refused(c, i, 0, 0);
            else ended(c, i, r == 0 ? 0 : 2);
            return;
        }
        c->last_rx = mono();
        const char *p = rbuf; int n = (int)r;
        if (c->state == WAITBODY) {
            int take = n < BUF - 1 - c->len ? n : BUF - 1 - c->len;
            memcpy(c->buf + c->len, p, take);
            c->len += take; c->buf[c->len] = 0;
            if (c->len >= c->body_left || c->len >= BUF - 1) { waited(c, i); return; }
            continue;
        }
        if (c->state == SENT) {
            int take = n < BUF - 1 - c->len ? n : BUF - 1 - c->len;
            memcpy(c->buf + c->len, p, take);
            c->len += take; c->buf[c->len] = 0;
            char *h = strstr(c->buf, "\r\n\r\n");
            if (!h) { if (c->len >= BUF - 1) refused(c, i, 2, 0); continue; }
            int head = (int)(h + 4 - c->buf);
            int status = c->len > 12 ? atoi(c->buf + 9) : 0;
            if (status != 200) { refused(c, i, 2, status); return; }
            long length = header_number(c->buf, head, "content-length:");
            if (length >= 0) { /* a 200 with a length is the "retry later" answer, never a stream */
                c->state = WAITBODY; c->body_left = (int)length;
                c->len -= head;
                memmove(c->buf, c->buf + head, c->len + 1);
                if (c->len >= c->body_left) { waited(c, i); return; }
                continue;
            }
            inflight--; streaming++; sessions++;
            c->state = STREAMING; c->refused_row = 0; c->http_failures = 0; c->replay_left = 0;
            c->chunk_left = -1; c->sizelen = 0;
            rec(R_SESSION, 0, c->host, epoch_of(c->sent_id), i, seq_of(c->sent_id), c->started_wall, wall());
            int rest = c->len - head;
            char tail[BUF];
            memcpy(tail, c->buf + head, rest);
            c->len = 0; c->buf[0] = 0;
            int done = body(c, i, tail, rest);
            if (!done && take < n) done = body(c, i, p + take, n - take);
            if (done) { ended(c, i, 0); return; }
            continue;
        }
        if (body(c, i, p, n)) { ended(c, i, 0); return; }
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOSTS PORT PATHS_FILE COUNT RECORDS_OUT [RAMP_PER_S] [KEEPALIVE_S] [MAX_INFLIGHT] [GROUP]\n", argv[0]);
        return 2;
    }
    char *hl = strdup(argv[1]), *save = NULL;
    for (char *tok = strtok_r(hl, ",", &save); tok && nhosts < MAX_HOSTS; tok = strtok_r(NULL, ",", &save)) {
        snprintf(host_names[nhosts], sizeof host_names[0], "%s", tok);
        hosts[nhosts].sin_family = AF_INET;
        if (inet_pton(AF_INET, tok, &hosts[nhosts].sin_addr) != 1) { fprintf(stderr, "bad host %s\n", tok); return 2; }
        nhosts++;
    }
    port = atoi(argv[2]);
    for (int h = 0; h < nhosts; h++) hosts[h].sin_port = htons(port);
    count = atol(argv[4]);
    const char *out = argv[5];
    double ramp = argc > 6 ? atof(argv[6]) : 0;
    dead_after = 3 * (argc > 7 ? atof(argv[7]) : 15.0);
    long max_inflight = argc > 8 ? atol(argv[8]) : 512;
    long group = argc > 9 ? atol(argv[9]) : 1;
    if (group < 1) group = 1;
    char *bl = strdup(argc > 10 ? argv[10] : "500"), *bsave = NULL;
    for (char *tok = strtok_r(bl, ",", &bsave); tok && nblip_ms < 16; tok = strtok_r(NULL, ",", &bsave))
        blip_ms[nblip_ms++] = atof(tok);
    if (!nblip_ms) blip_ms[nblip_ms++] = 500;

    FILE *f = fopen(argv[3], "r");
    if (!f) { perror("paths"); return 2; }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        paths = realloc(paths, sizeof(char *) * (npaths + 1));
        paths[npaths++] = strdup(line);
    }
    fclose(f);
    if (!npaths || !nhosts) { fprintf(stderr, "no paths or hosts\n"); return 2; }

    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGTERM, on_stop); signal(SIGINT, on_stop); signal(SIGUSR1, on_ids); signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR2, on_blip);
    srandom((unsigned)getpid());
    ep = epoll_create1(0);
    conns = calloc(count, sizeof(conn_t));
    double t0 = mono();
    for (long i = 0; i < count; i++) {
        conn_t *c = &conns[i];
        c->fd = -1; c->state = WAITING; c->host = (int)((i / group) % nhosts); c->retry_ms = 3000;
        c->last_id[0] = 0; c->sent_id[0] = 0; c->last_seq = -1; c->first_id = -1; c->buf = malloc(BUF); c->buf[0] = 0;
        c->next_at = t0 + (ramp > 0 ? i / ramp : 0);
    }
    struct epoll_event evs[1024];
    double last_scan = 0, last_status = t0;
    int ready = 0;
    while (!stop_flag) {
        double now = mono();
        if (now - last_scan >= 0.02) { /* start due connects; time out heads; find silent streams */
            last_scan = now;
            for (long i = 0; i < count; i++) {
                conn_t *c = &conns[i];
                if (c->state == WAITING) {
                    if (c->next_at <= now && inflight < max_inflight) start_connect(c, i);
                } else if (c->state == STREAMING) {
                    if (now - c->last_rx > dead_after) ended(c, i, 1);
                } else if (now - c->started_mono > HEAD_TIMEOUT) {
                    refused(c, i, 1, 0);
                }
            }
        }
        if (!ready && opened_once == count) {
            ready = 1;
            fprintf(stderr, "READY up=%ld after %.1fs\n", streaming, now - t0);
        }
        if (blip_flag) {
            blip_flag = 0;
            int k = blips++;
            long dropped = 0;
            for (long i = 0; i < count; i++) {
                conn_t *c = &conns[i];
                if (i % 3 != k % 3 || c->state != STREAMING) continue;
                int host = c->host;
                ended(c, i, 3);
                c->host = host; /* a blip: the same host, after BLIP_MS */
                c->next_at = now + blip_ms[k % nblip_ms] / 1000.0;
                dropped++;
            }
            fprintf(stderr, "BLIP %d dropped=%ld reconnect_ms=%.0f\n", k, dropped, blip_ms[k % nblip_ms]);
        }
        if (ids_flag) {
            ids_flag = 0;
            long long lowest = -1;
            long behind = 0;
            for (long i = 0; i < count; i++) {
                if (!nepochs || conns[i].last_epoch != nepochs) { behind++; continue; }
                if (lowest < 0 || conns[i].last_seq < lowest) lowest = conns[i].last_seq;
            }
            fprintf(stderr, "IDS streaming=%ld min=%lld epoch=%d behind=%ld\n", streaming, lowest, nepochs, behind);
        }
        if (now - last_status >= 2.0) {
            last_status = now;
            fprintf(stderr, "STATUS t=%.0f streaming=%ld inflight=%ld opened=%ld sessions=%ld events=%ld refusals=%ld waits=%ld\n",
                    now - t0, streaming, inflight, opened_once, sessions, events, refusals, waits);
        }
        int n = epoll_wait(ep, evs, 1024, 5);
        for (int k = 0; k < n; k++) {
            long i = (long)evs[k].data.u64;
            conn_t *c = &conns[i];
            if (c->fd < 0) continue;
            if (c->state == CONNECTING) {
                int err = 0; socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || !(evs[k].events & EPOLLOUT)) refused(c, i, 0, 0);
                else send_request(c, i);
                continue;
            }
            readable(c, i);
        }
    }
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    FILE *o = fopen(out, "wb");
    if (!o) { perror("records"); return 1; }
    fwrite(recs, sizeof(rec_t), nrecs, o);
    fclose(o);
    printf("{\"streams\":%ld,\"opened\":%ld,\"streaming\":%ld,\"sessions\":%ld,\"events\":%ld,\"refusals\":%ld,"
           "\"rebuilt\":%ld,\"records\":%ld,\"cpu_seconds\":%.3f,\"waits\":{",
           count, opened_once, streaming, sessions, events, refusals, rebuilt, nrecs, cpu);
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (wait_status[s]) { printf("%s\"wait_%d\":%ld", first ? "" : ",", s, wait_status[s]); first = 0; }
    printf("},\"epochs\":[");
    for (int k = 0; k < nepochs; k++) printf("%s\"%s\"", k ? "," : "", epochs[k]);
    printf("]}\n");
    return 0;
}
