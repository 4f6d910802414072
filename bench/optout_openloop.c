/* Open-loop load generator of bench/optout_pages.py (compiled by it with cc).
 *
 * Request n leaves at start + n / rate on a new connection, whatever happened to the
 * earlier ones, so a stalled server shows up as latency instead of slowing the sender
 * (no coordinated omission). One process, one thread, epoll and a timerfd: it costs
 * next to nothing beside gunicorn and PostgreSQL on the same cores, unlike a Python
 * event loop, whose own delays under load were counted as the server's.
 *
 *   optout_openloop PORT RATE SECONDS PATHS_FILE REST_FILE
 *
 * PATHS_FILE: one request path per line, request n takes line n (cycled when fewer);
 * REST_FILE: the bytes after the request line (headers, blank line, body), sent as
 * they are. Prints one line per request, times in CLOCK_MONOTONIC nanoseconds (Python's
 * time.monotonic_ns()):  n scheduled answered status  (status 0: no HTTP answer).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int status;
    size_t sent;
    int64_t scheduled, answered;
    char head[12];
    int head_len;
} Request;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void finish(int epoll_fd, Request *r) {
    r->answered = now_ns();
    if (r->head_len == 12 && memcmp(r->head, "HTTP/1.", 7) == 0) r->status = atoi(r->head + 9);
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, r->fd, NULL);
    close(r->fd);
    r->fd = -1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT RATE SECONDS PATHS_FILE REST_FILE\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    long total = (long)(rate * seconds);
    if (port <= 0 || rate <= 0 || total <= 0) return 2;

    FILE *f = fopen(argv[4], "r");
    if (!f) { perror(argv[4]); return 2; }
    char **paths = NULL, *line = NULL;
    long npaths = 0, cap = 0;
    size_t line_cap = 0;
    ssize_t len;
    while ((len = getline(&line, &line_cap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (npaths == cap) paths = realloc(paths, (cap = cap ? 2 * cap : 1024) * sizeof *paths);
        paths[npaths++] = strdup(line);
    }
    fclose(f);
    f = fopen(argv[5], "rb");
    if (!f) { perror(argv[5]); return 2; }
    static char rest[16384];
    size_t rest_len = fread(rest, 1, sizeof rest, f);
    fclose(f);
    if (!npaths || !rest_len) { fprintf(stderr, "no paths or no request\n"); return 2; }

    /* Every request is built before the clock starts. */
    char **raw = calloc(total, sizeof *raw);
    size_t *raw_len = calloc(total, sizeof *raw_len);
    Request *reqs = calloc(total, sizeof *reqs);
    for (long n = 0; n < total; n++) {
        const char *path = paths[n % npaths];
        size_t size = strlen(path) + 32 + rest_len;
        raw[n] = malloc(size);
        int head = snprintf(raw[n], size, "POST %s HTTP/1.1\r\n", path);
        memcpy(raw[n] + head, rest, rest_len);
        raw_len[n] = head + rest_len;
        reqs[n].fd = -1;
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int ep = epoll_create1(0), timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tick = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tick);

    int64_t start = now_ns() + 100000000;
    long next = 0, done = 0;
    static char buf[65536];
    while (done < total) {
        int64_t now = now_ns();
        for (; next < total && start + (int64_t)(next * 1e9 / rate) <= now; next++) {
            Request *r = &reqs[next];
            r->scheduled = start + (int64_t)(next * 1e9 / rate);
            r->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (r->fd < 0) { r->answered = now_ns(); done++; continue; }
            int one = 1;
            setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(r->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
                close(r->fd);
                r->fd = -1;
                r->answered = now_ns();
                done++;
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)next};
            epoll_ctl(ep, EPOLL_CTL_ADD, r->fd, &ev);
        }
        if (next < total) {
            int64_t at = start + (int64_t)(next * 1e9 / rate);
            struct itimerspec when = {.it_value = {at / 1000000000, at % 1000000000}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL);
        }
        struct epoll_event events[256];
        int ready = epoll_wait(ep, events, 256, 1000);
        for (int i = 0; i < ready; i++) {
            if (events[i].data.u64 == UINT64_MAX) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0) { /* nothing due yet */ }
                continue;
            }
            long n = (long)events[i].data.u64;
            Request *r = &reqs[n];
            if (r->fd < 0) continue;
            if (r->sent < raw_len[n]) {
                if (events[i].events & (EPOLLERR | EPOLLHUP)) { finish(ep, r); done++; continue; }
                ssize_t w = write(r->fd, raw[n] + r->sent, raw_len[n] - r->sent);
                if (w < 0 && errno != EAGAIN) { finish(ep, r); done++; continue; }
                if (w > 0) r->sent += w;
                if (r->sent == raw_len[n]) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)n};
                    epoll_ctl(ep, EPOLL_CTL_MOD, r->fd, &ev);
                }
                continue;
            }
            for (;;) { /* to EOF: gunicorn's sync workers close after the answer */
                ssize_t got = read(r->fd, buf, sizeof buf);
                if (got > 0) {
                    int take = got < 12 - r->head_len ? (int)got : 12 - r->head_len;
                    memcpy(r->head + r->head_len, buf, take);
                    r->head_len += take;
                    continue;
                }
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
                finish(ep, r);
                done++;
                break;
            }
        }
    }
    for (long n = 0; n < total; n++)
        printf("%ld %lld %lld %d\n", n, (long long)reqs[n].scheduled, (long long)reqs[n].answered, reqs[n].status);
    return 0;
}
