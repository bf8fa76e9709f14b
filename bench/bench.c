// bench.c - tiny endpoint for relay benchmarks (loopback / unix / sandbox namespaces only).
// Copy of ../shared/perf/bench.c for NIPC's bench/run; additions are marked [nipc-bench]:
//   - ADDR nipc:/daemon.sock:/target.sock@host  (connect to the NIPC daemon's socket, send
//     "CONNECT /target.sock@host\n", expect "OK\n", then behave exactly like unix:)
//   - server TCPPORT may be ADDR:PORT (bind that address instead of 127.0.0.1)
//   - modes tput2 (both ways at once), rate (sustained connects), probe (RTT over time)
//   - env BENCH_SAMPLES=FILE: stats() also writes every sample (seconds) to FILE
// server:  bench server UNIXPATH TCPPORT      (epoll; greets every conn with 'G')
//   after greeting the client sends a mode byte:
//     'S' + 8-byte LE length : sink that many bytes, then reply 'A'
//     'E'                    : echo everything
// client:  bench ADDR tput BYTES [CHUNK]   -> "tput bytes secs MBps"
//          bench ADDR lat N                -> "lat n p50 p99 mean max" (us)
//          bench ADDR conn N               -> "conn n p50 p99 mean max" (us, connect->greeting)
//          bench ADDR hold N [BATCH]       -> opens N (BATCH at a time), prints "held N", waits for stdin EOF
//          bench ADDR tput2 BYTES [CHUNK]  -> "tput2 bytes secs MBps" (echo: BYTES each way at once)
//          bench ADDR rate SECS [PROCS]    -> "rate ok errors secs per_sec" (PROCS loops of connect->greeting->close)
//          bench ADDR probe SECS [GAP_US]  -> "lat n p50 p99 mean max" (1-byte echo every GAP_US for SECS)
//   ADDR = unix:/path | tcp:127.0.0.1:port | nipc:/daemon.sock:/target.sock@host
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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <pthread.h>
#include <sys/time.h>
#include <sys/wait.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void die(const char *m) { perror(m); exit(1); }

static int soft;  // [nipc-bench] rate mode: a failed connect returns -1 instead of exiting
static int fail(const char *m, int fd) { if (!soft) die(m); if (fd >= 0) close(fd); return -1; }
static int dial(const char *addr) {
    int fd;
    if (!strncmp(addr, "nipc:", 5)) {  // [nipc-bench] nipc:/daemon.sock:/target.sock@host
        const char *c = strchr(addr + 5, ':');
        if (!c) { fprintf(stderr, "bad nipc addr\n"); exit(2); }
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%.*s", (int)(c - addr - 5), addr + 5);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (void *)&sa, sizeof sa) < 0) return fail("connect nipc daemon", fd);
        char req[1200]; int n = snprintf(req, sizeof req, "CONNECT %s\n", c + 1);
        if (write(fd, req, n) != n) return fail("write CONNECT", fd);
        char line[1100]; int l = 0;  // the reply line, byte by byte: what follows is the stream
        for (;;) {
            ssize_t r = read(fd, line + l, 1);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { fprintf(stderr, "nipc: daemon closed without a reply\n"); return fail("nipc reply", fd); }
            if (line[l] == '\n' || l == (int)sizeof line - 2) break;
            l++;
        }
        line[l] = 0;
        if (strcmp(line, "OK")) { fprintf(stderr, "nipc: %s\n", line); if (!soft) exit(1); close(fd); return -1; }
        return fd;
    }
    if (!strncmp(addr, "unix:", 5)) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, addr + 5, sizeof sa.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (void *)&sa, sizeof sa) < 0) return fail("connect unix", fd);
    } else if (!strncmp(addr, "tcp:", 4)) {
        char host[64]; const char *c = strrchr(addr + 4, ':');
        snprintf(host, sizeof host, "%.*s", (int)(c - addr - 4), addr + 4);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(c + 1))};
        inet_pton(AF_INET, host, &sa.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (void *)&sa, sizeof sa) < 0) return fail("connect tcp", fd);
    } else { fprintf(stderr, "bad addr\n"); exit(2); }
    return fd;
}
static void readn(int fd, void *b, size_t n) {
    size_t g = 0;
    while (g < n) { ssize_t r = read(fd, (char *)b + g, n - g); if (r <= 0) { if (r < 0 && errno == EINTR) continue; die("readn"); } g += r; }
}
static void writen(int fd, const void *b, size_t n) {
    size_t g = 0;
    while (g < n) { ssize_t r = write(fd, (const char *)b + g, n - g); if (r <= 0) { if (r < 0 && errno == EINTR) continue; die("writen"); } g += r; }
}
static int cmpd(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
static void stats(const char *tag, double *v, int n) {
    qsort(v, n, sizeof *v, cmpd); double s = 0; for (int i = 0; i < n; i++) s += v[i];
    const char *dump = getenv("BENCH_SAMPLES");  // [nipc-bench]
    if (dump && *dump) { FILE *f = fopen(dump, "w"); if (f) { for (int i = 0; i < n; i++) fprintf(f, "%.9f\n", v[i]); fclose(f); } }
    printf("%s %d %.1f %.1f %.1f %.1f\n", tag, n, v[n / 2] * 1e6, v[(int)(n * 0.99)] * 1e6, s / n * 1e6, v[n - 1] * 1e6);
}

static volatile sig_atomic_t stop;  // [nipc-bench]
static void on_stop(int sig) { (void)sig; stop = 1; }
struct tput2 { int fd; uint64_t total; size_t chunk; };  // [nipc-bench]
static void *tput2_writer(void *arg) {
    struct tput2 *t = arg; char *buf = malloc(t->chunk); memset(buf, 'x', t->chunk);
    for (uint64_t s = 0; s < t->total;) { size_t m = t->total - s < t->chunk ? t->total - s : t->chunk; writen(t->fd, buf, m); s += m; }
    free(buf); return NULL;
}

/* ---------------- server ---------------- */
struct conn { int fd; int state; unsigned char hdr[9]; int hl; uint64_t left; };
enum { MODE, HDR, SINK, ECHO };
static char sbuf[1 << 20];

static int listen_unix(const char *p) {
    unlink(p);
    struct sockaddr_un sa = {.sun_family = AF_UNIX}; strncpy(sa.sun_path, p, sizeof sa.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (bind(fd, (void *)&sa, sizeof sa) < 0) die("bind unix");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}
static int listen_tcp(const char *spec) {  // [nipc-bench] PORT or ADDR:PORT
    const char *c = strrchr(spec, ':'); char host[64] = "127.0.0.1";
    if (c) snprintf(host, sizeof host, "%.*s", (int)(c - spec), spec);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(c ? c + 1 : spec))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (void *)&sa, sizeof sa) < 0) die("bind tcp");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}
static void closec(int ep, struct conn *c) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); free(c); }

static int server(const char *upath, const char *port) {
    signal(SIGPIPE, SIG_IGN);
    int ep = epoll_create1(0);
    int lu = listen_unix(upath), lt = listen_tcp(port);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.ptr = NULL; ev.data.u64 = 1; epoll_ctl(ep, EPOLL_CTL_ADD, lu, &ev);
    ev.data.u64 = 2; epoll_ctl(ep, EPOLL_CTL_ADD, lt, &ev);
    printf("ready\n"); fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 1 || evs[i].data.u64 == 2) {
                int lfd = evs[i].data.u64 == 1 ? lu : lt;
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    if (lfd == lt) { int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
                    struct conn *c = calloc(1, sizeof *c); c->fd = fd; c->state = MODE;
                    if (write(fd, "G", 1) != 1) { close(fd); free(c); continue; }
                    struct epoll_event e = {.events = EPOLLIN}; e.data.ptr = c; epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            ssize_t r = read(c->fd, sbuf, sizeof sbuf);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { closec(ep, c); continue; }
            if (r < 0) continue;
            char *p = sbuf; ssize_t k = r;
            while (k > 0) {
                if (c->state == MODE) {
                    if (*p == 'S') { c->state = HDR; c->hl = 0; }
                    else if (*p == 'E') c->state = ECHO;
                    p++; k--;
                } else if (c->state == HDR) {
                    while (k > 0 && c->hl < 8) { c->hdr[c->hl++] = *p++; k--; }
                    if (c->hl == 8) { memcpy(&c->left, c->hdr, 8); c->state = SINK; if (!c->left) { writen(c->fd, "A", 1); c->state = MODE; } }
                } else if (c->state == SINK) {
                    uint64_t t = (uint64_t)k < c->left ? (uint64_t)k : c->left;
                    c->left -= t; p += t; k -= t;
                    if (!c->left) { writen(c->fd, "A", 1); c->state = MODE; }
                } else { // ECHO: blocking-ish write back
                    int fl = fcntl(c->fd, F_GETFL); fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
                    writen(c->fd, p, k); fcntl(c->fd, F_SETFL, fl); k = 0;
                }
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "server")) return server(argv[2], argv[3]);
    if (argc < 4) { fprintf(stderr, "usage\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    const char *addr = argv[1], *mode = argv[2];
    char g;
    if (!strcmp(mode, "tput")) {
        uint64_t total = strtoull(argv[3], 0, 0); size_t chunk = argc > 4 ? strtoul(argv[4], 0, 0) : 262144;
        char *buf = malloc(chunk); memset(buf, 'x', chunk);
        int fd = dial(addr); readn(fd, &g, 1);
        unsigned char hdr[9]; hdr[0] = 'S'; memcpy(hdr + 1, &total, 8);
        double t0 = now();
        writen(fd, hdr, 9);
        for (uint64_t s = 0; s < total;) { size_t m = total - s < chunk ? total - s : chunk; writen(fd, buf, m); s += m; }
        readn(fd, &g, 1);
        double dt = now() - t0;
        printf("tput %llu %.4f %.1f\n", (unsigned long long)total, dt, total / dt / 1e6);
        close(fd);
    } else if (!strcmp(mode, "lat")) {
        int n = atoi(argv[3]); double *v = malloc(n * sizeof *v);
        int fd = dial(addr); readn(fd, &g, 1); writen(fd, "E", 1);
        char b = 'p';
        for (int i = 0; i < 500; i++) { writen(fd, &b, 1); readn(fd, &b, 1); }
        for (int i = 0; i < n; i++) { double t0 = now(); writen(fd, &b, 1); readn(fd, &b, 1); v[i] = now() - t0; }
        stats("lat", v, n); close(fd);
    } else if (!strcmp(mode, "conn")) {
        int n = atoi(argv[3]); double *v = malloc(n * sizeof *v);
        for (int i = 0; i < n; i++) { double t0 = now(); int fd = dial(addr); readn(fd, &g, 1); v[i] = now() - t0; close(fd); }
        stats("conn", v, n);
    } else if (!strcmp(mode, "tput2")) {  // [nipc-bench] both ways at once through the echo mode
        uint64_t total = strtoull(argv[3], 0, 0); size_t chunk = argc > 4 ? strtoul(argv[4], 0, 0) : 262144;
        int fd = dial(addr); readn(fd, &g, 1);
        struct tput2 t = {fd, total, chunk};
        double t0 = now();
        writen(fd, "E", 1);
        pthread_t th; pthread_create(&th, NULL, tput2_writer, &t);
        char *buf = malloc(chunk);
        for (uint64_t got = 0; got < total;) {
            ssize_t r = read(fd, buf, total - got < chunk ? total - got : chunk);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) die("tput2 read");
            got += r;
        }
        double dt = now() - t0;
        pthread_join(th, NULL);
        printf("tput2 %llu %.4f %.1f\n", (unsigned long long)total, dt, total / dt / 1e6);
        close(fd);
    } else if (!strcmp(mode, "rate")) {  // [nipc-bench] PROCS loops of connect -> greeting -> close
        double secs = atof(argv[3]); int procs = argc > 4 ? atoi(argv[4]) : 1; int pfd[2];
        if (pipe(pfd) < 0) die("pipe");
        soft = 1; double t0 = now();
        for (int p = 0; p < procs; p++) {
            if (fork() == 0) {
                long ok = 0, err = 0; struct timeval tv = {10, 0};
                while (now() - t0 < secs) {
                    int fd = dial(addr);
                    if (fd < 0) { err++; usleep(1000); continue; }
                    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                    if (read(fd, &g, 1) == 1) ok++; else err++;
                    close(fd);
                }
                long r[2] = {ok, err}; if (write(pfd[1], r, sizeof r) != sizeof r) _exit(1);
                _exit(0);
            }
        }
        close(pfd[1]); long ok = 0, err = 0, r[2];
        while (read(pfd[0], r, sizeof r) == sizeof r) { ok += r[0]; err += r[1]; }
        while (wait(NULL) > 0) {}
        double dt = now() - t0;
        printf("rate %ld %ld %.3f %.1f\n", ok, err, dt, ok / dt);
    } else if (!strcmp(mode, "probe")) {  // [nipc-bench] RTT of a 1-byte echo, repeatedly, for SECS
        double secs = atof(argv[3]); int gap = argc > 4 ? atoi(argv[4]) : 1000;
        signal(SIGINT, on_stop); signal(SIGTERM, on_stop);  // SIGINT/SIGTERM: stop early, print stats
        int cap = 1 << 20, n = 0; double *v = malloc(cap * sizeof *v);
        int fd = dial(addr); readn(fd, &g, 1); writen(fd, "E", 1);
        char b = 'p'; double t0 = now();
        printf("probing\n"); fflush(stdout);
        while (!stop && now() - t0 < secs && n < cap) {
            double t1 = now(); writen(fd, &b, 1); readn(fd, &b, 1); v[n++] = now() - t1;
            if (gap > 0) usleep(gap);
        }
        stats("lat", v, n); close(fd);
    } else if (!strcmp(mode, "hold")) {
        int n = atoi(argv[3]); int *fds = malloc(n * sizeof *fds); double *v = malloc(n * sizeof *v);
        int bs = argc > 4 ? atoi(argv[4]) : 1;  // connect in batches of bs, then read their greetings
        for (int i = 0; i < n; i += bs) {
            int m = i + bs < n ? i + bs : n; double t0 = now();
            for (int j = i; j < m; j++) fds[j] = dial(addr);
            for (int j = i; j < m; j++) { readn(fds[j], &g, 1); v[j] = now() - t0; }
        }
        stats("holdconn", v, n);
        printf("held %d\n", n); fflush(stdout);
        char x[16]; while (read(0, x, sizeof x) > 0) {}
        for (int i = 0; i < n; i++) close(fds[i]);
    }
    fflush(stdout);
    return 0;
}
