/* oloop: an open-loop HTTP/1.1 load generator for the /predict benchmark.
 *
 * A fixed schedule: request i is due at t0 + i / rate. Each request goes out on an idle
 * keep-alive connection as soon as it is due (one request in flight per connection, no
 * pipelining); when every connection is busy it waits, and its latency still counts from
 * the time it was due (a stall of the server counts for every request scheduled during it,
 * as in wrk2). Bodies come from a file and rotate. Answers are parsed by Content-Length.
 *
 * Writes, for every scheduled request in schedule order, two raw little-endian int64
 * arrays: PREFIX.lat (latency in µs from the due time to the last byte of the answer, -1
 * if never answered) and PREFIX.jit (actual send time - due time in µs, -1 if never sent).
 * A one-line JSON summary goes to stdout.
 *
 *   oloop -p PORT -r RATE -d SECONDS -b BODIES -o PREFIX [-h 127.0.0.1] [-u /predict]
 *         [-c CONNECTIONS] [-t CONTENT_TYPE] [-g DRAIN_SECONDS]
 *
 * BODIES: records of a 4-byte little-endian length followed by that many bytes. A body may
 * hold the marker ################ (16 '#'): each request gets it replaced by a 16-digit id,
 * 4 digits of this process's id and 12 of the request's index, so every request carries its
 * own request id (a hash split by request id then sees fresh ids, never the same few).
 * Exit 0 when the run completed (errors are reported, not fatal), 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define INBUF 65536

#define MARKER "################"
#define MARKER_LEN 16

typedef struct {
    int fd;
    int64_t req;          /* index of the request in flight, -1 when idle */
    char *buf;            /* this connection's copy of a request whose body has a marker */
    const char *out;      /* bytes still to write */
    size_t out_len;
    char in[INBUF];
    size_t in_len;
} conn_t;

typedef struct {
    char *bytes;
    size_t len;
    long marker;  /* offset of the id marker, -1 if none */
} msg_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "oloop: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int open_conn(const char *host, int port, int ep, int idx) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "oloop: bad IPv4 address %s\n", host);
        exit(2);
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return fd;
}

static msg_t *load_bodies(const char *path, const char *host, int port, const char *uri,
                          const char *ctype, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    size_t cap = 64, n = 0;
    msg_t *msgs = malloc(cap * sizeof *msgs);
    unsigned char lb[4];
    while (fread(lb, 1, 4, f) == 4) {
        size_t len = lb[0] | lb[1] << 8 | lb[2] << 16 | (size_t)lb[3] << 24;
        char head[512];
        int hl = snprintf(head, sizeof head,
                          "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          uri, host, port, ctype, len);
        if (n == cap) msgs = realloc(msgs, (cap *= 2) * sizeof *msgs);
        msgs[n].bytes = malloc((size_t)hl + len);
        memcpy(msgs[n].bytes, head, (size_t)hl);
        if (fread(msgs[n].bytes + hl, 1, len, f) != len) {
            fprintf(stderr, "oloop: %s: truncated record %zu\n", path, n);
            exit(2);
        }
        msgs[n].len = (size_t)hl + len;
        char *at = memmem(msgs[n].bytes + hl, len, MARKER, MARKER_LEN);
        msgs[n].marker = at ? at - msgs[n].bytes : -1;
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "oloop: %s: no bodies\n", path);
        exit(2);
    }
    *count = n;
    return msgs;
}

/* Length of one complete answer at the start of buf, 0 if incomplete, -1 if malformed. */
static long parse_answer(const char *buf, size_t len, int *status) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return len >= INBUF ? -1 : 0;
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(buf + 9);
    size_t head = (size_t)(end - buf) + 4;
    long body = -1;
    for (const char *p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
            body = strtol(p + 15, NULL, 10);
            break;
        }
    }
    if (body < 0 || head + (size_t)body > INBUF) return -1;
    return head + (size_t)body <= len ? (long)(head + (size_t)body) : 0;
}

static void write_array(const char *prefix, const char *ext, const int64_t *a, int64_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    FILE *f = fopen(path, "wb");
    if (!f) die(path);
    if (fwrite(a, sizeof *a, (size_t)n, f) != (size_t)n) die(path);
    fclose(f);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *uri = "/predict", *ctype = "application/msgpack";
    const char *bodies = NULL, *prefix = NULL;
    int port = 0, nconn = 32, opt;
    double rate = 0, seconds = 0, drain_s = 2.0;
    while ((opt = getopt(argc, argv, "h:p:u:c:r:d:b:o:t:g:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': uri = optarg; break;
        case 'c': nconn = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'b': bodies = optarg; break;
        case 'o': prefix = optarg; break;
        case 't': ctype = optarg; break;
        case 'g': drain_s = atof(optarg); break;
        default: return 2;
        }
    }
    if (!port || rate <= 0 || seconds <= 0 || !bodies || !prefix || nconn < 1) {
        fprintf(stderr, "usage: oloop -p PORT -r RATE -d SECONDS -b BODIES -o PREFIX "
                        "[-h HOST] [-u URI] [-c CONNS] [-t CONTENT_TYPE] [-g DRAIN_S]\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL);  /* wake on the due time, not up to 50 µs after it */

    size_t nmsg;
    msg_t *msgs = load_bodies(bodies, host, port, uri, ctype, &nmsg);
    int64_t total = (int64_t)(rate * seconds);
    double interval_ns = 1e9 / rate;
    int64_t *lat = malloc((size_t)total * sizeof *lat);
    int64_t *jit = malloc((size_t)total * sizeof *jit);
    for (int64_t i = 0; i < total; i++) lat[i] = jit[i] = -1;

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) die("epoll_ctl");
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    /* Idle connections, first in first out: each is used in turn, so none sits idle long
     * enough for the server's keep-alive timeout to close it. */
    int *idle = malloc((size_t)nconn * sizeof *idle);
    int nidle = 0;
    int64_t idle_head = 0;
#define IDLE_PUSH(c) (idle[(idle_head + nidle++) % nconn] = (c))
#define IDLE_POP() (nidle--, idle[idle_head++ % nconn])
    size_t longest = 0;
    for (size_t i = 0; i < nmsg; i++)
        if (msgs[i].len > longest) longest = msgs[i].len;
    int nonce = (int)(getpid() % 10000);
    for (int c = 0; c < nconn; c++) {
        conns[c].buf = malloc(longest + 1);
        conns[c].fd = open_conn(host, port, ep, c);
        conns[c].req = -1;
        IDLE_PUSH(c);
    }

    int64_t next = 0, done = 0, sent = 0, non2xx = 0, sock_errors = 0, reconnects = 0;
    int64_t waited_for_conn = 0;
    int starved = 0;  /* a request came due with every connection busy */
    int64_t t0 = now_ns() + 10000000LL;  /* 10 ms from now: the schedule starts clean */
    int64_t end_due = t0 + (int64_t)(seconds * 1e9);
    int64_t deadline = end_due + (int64_t)(drain_s * 1e9);
    int64_t armed = -1;
    struct epoll_event evs[256];

    for (;;) {
        int64_t now = now_ns();
        /* Everything due goes out now, as far as connections allow. */
        while (next < total && t0 + (int64_t)(next * interval_ns) <= now && nidle > 0) {
            int c = IDLE_POP();
            conn_t *k = &conns[c];
            msg_t *m = &msgs[next % (int64_t)nmsg];
            int64_t due = t0 + (int64_t)(next * interval_ns);
            k->req = next;
            k->out = m->bytes;
            k->out_len = m->len;
            if (m->marker >= 0) {
                char id[32];
                snprintf(id, sizeof id, "%04d%012lld", nonce, (long long)(next % 1000000000000LL));
                memcpy(k->buf, m->bytes, m->len);
                memcpy(k->buf + m->marker, id, MARKER_LEN);
                k->out = k->buf;
            }
            int64_t ts = now_ns();
            jit[next] = (ts - due) / 1000;
            ssize_t w = write(k->fd, k->out, k->out_len);
            if (w > 0) {
                k->out += w;
                k->out_len -= (size_t)w;
            }
            if (k->out_len > 0) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c};
                epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
            }
            waited_for_conn += starved;
            sent++;
            next++;
            now = ts;
        }
        starved = next < total && t0 + (int64_t)(next * interval_ns) <= now;
        if ((next == total && done == sent) || now >= deadline) break;

        /* Sleep until the next due time (if a connection is free) or an answer. */
        int64_t wake = deadline;
        if (next < total && nidle > 0) {
            int64_t due = t0 + (int64_t)(next * interval_ns);
            if (due < wake) wake = due;
        }
        if (wake != armed) {
            struct itimerspec its = {0};
            its.it_value.tv_sec = wake / 1000000000LL;
            its.it_value.tv_nsec = wake % 1000000000LL;
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            armed = wake;
        }
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            uint32_t c = evs[e].data.u32;
            if (c == UINT32_MAX) {
                uint64_t x;
                ssize_t r = read(tfd, &x, sizeof x);
                (void)r;
                armed = -1;
                continue;
            }
            conn_t *k = &conns[c];
            if ((evs[e].events & EPOLLOUT) && k->out_len > 0) {
                ssize_t w = write(k->fd, k->out, k->out_len);
                if (w > 0) {
                    k->out += w;
                    k->out_len -= (size_t)w;
                }
                if (k->out_len == 0) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
                }
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = read(k->fd, k->in + k->in_len, INBUF - k->in_len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            int status = 0;
            long used = r > 0 ? parse_answer(k->in, k->in_len += (size_t)r, &status) : -1;
            if (used == 0) continue;
            int64_t ts = now_ns();
            if (used > 0 && k->req >= 0) {
                int64_t due = t0 + (int64_t)(k->req * interval_ns);
                lat[k->req] = (ts - due) / 1000;
                if (status < 200 || status > 299) non2xx++;
                memmove(k->in, k->in + used, k->in_len - (size_t)used);
                k->in_len -= (size_t)used;
                k->req = -1;
                done++;
                IDLE_PUSH((int)c);
                continue;
            }
            /* Closed, reset or unparseable: reconnect. With a request in flight that request
             * failed; an idle connection the server closed is only replaced (it stays queued). */
            epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
            close(k->fd);
            k->fd = open_conn(host, port, ep, (int)c);
            k->in_len = 0;
            k->out_len = 0;
            reconnects++;
            if (k->req >= 0) {
                sock_errors++;
                done++;
                k->req = -1;
                IDLE_PUSH((int)c);
            }
        }
    }
    int64_t finished = now_ns();
    int64_t answered = 0;
    for (int64_t i = 0; i < total; i++) answered += lat[i] >= 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double cpu_sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    write_array(prefix, "lat", lat, total);
    write_array(prefix, "jit", jit, total);
    printf("{\"scheduled\":%lld,\"sent\":%lld,\"answered\":%lld,\"non_2xx\":%lld,"
           "\"socket_errors\":%lld,\"reconnects\":%lld,\"waited_for_connection\":%lld,"
           "\"rate\":%.3f,\"seconds\":%.3f,\"connections\":%d,\"t0_monotonic_ns\":%lld,"
           "\"elapsed_s\":%.6f,\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f}\n",
           (long long)total, (long long)sent, (long long)answered, (long long)non2xx,
           (long long)sock_errors, (long long)reconnects, (long long)waited_for_conn, rate,
           seconds, nconn, (long long)t0, (finished - t0) / 1e9, cpu_user, cpu_sys);
    return 0;
}
