/*
 * loadgen: ping-pong TCP echo load generator (single thread, epoll, non-blocking).
 *
 *   loadgen --host 127.0.0.1 --port N --conns C --size S --seconds T
 *           [--warmup W] [--pipeline P] [--setup-timeout X] [--sync] [--length-prefix]
 *
 * Each of C connections keeps P messages of S bytes in flight.  Message k of
 * connection c is the S bytes at a pseudo-random offset (a hash of c and k) in a
 * random pool built once at start-up, so contents differ per connection and per
 * message without any per-byte work on the hot path.  Every echoed byte is
 * checked with one memcmp against the pool; reads may arrive in any pieces.
 *
 * --length-prefix: each message on the wire is a 4-byte big-endian length (S)
 * followed by the S payload bytes (sent with writev from a shared header and the
 * pool, no copy); the echo must be the same S + 4 bytes, verified the same way
 * (header bytes against the header, payload bytes against the pool).  A message
 * is still one round trip; qps counts messages, not bytes.
 *
 * Phases: setup (connect, at most 64 connections between connect() and their
 * first completed echo, so no listen backlog overflows; ends when every
 * connection has completed one round trip), warmup (W s, not counted), measure
 * (T s, round trips completed in this window are counted), drain (no new
 * messages; every message in flight must come back within 3 s).
 *
 * Output: one JSON line on stdout
 *   {"messages": N, "seconds": T, "qps": Q, "errors": E}
 * where seconds is the measured window actually elapsed (CLOCK_MONOTONIC).
 * Exit status is non-zero on any verification failure or connection error, on
 * a timeout, or if no message completed in the window.
 *
 * --sync (used by run_echo.py): print "#start" / "#end" lines on stderr at the
 * exact edges of the measured window, and after the drain wait (at most 10 s)
 * for one line on stdin before closing the connections, so the runner can
 * sample the server's CPU time at the window edges and the server's close work
 * falls outside the sample.
 *
 * The whole run is bounded by alarm(): setup-timeout + W + T + 30 s.
 *
 * --tls (a binary built with -DLOADGEN_TLS, linked with -lssl -lcrypto): every
 * connection does a TLS handshake (OpenSSL's defaults: TLS 1.3, AES-GCM; the server's
 * certificate is not verified) before its first message, and messages go through
 * SSL_write / SSL_read (SSL_read is repeated until it wants more, so nothing waits
 * inside OpenSSL while epoll sleeps).  The handshakes are part of setup, outside the
 * measured window.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define POOL_SPAN (1u << 20) /* number of distinct message start offsets */
#define RBUF_SIZE (256 * 1024)
#define MAX_IOV 64
#define MAX_EVENTS 512
#define SETUP_WINDOW 64 /* connections between connect() and first echo */
#define DRAIN_SECONDS 3.0
#define SYNC_WAIT_MS 10000

enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_ACTIVE };
enum { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_DRAIN };

typedef struct {
    int fd;
    int state;
    uint32_t events;  /* currently registered epoll events */
    uint64_t tx_seq;  /* message being sent (or next to send) */
    size_t tx_pos;    /* bytes of tx_seq already sent (of wire_size) */
    uint64_t rx_seq;  /* message being received */
    size_t rx_pos;    /* bytes of rx_seq already received and verified (of wire_size) */
#ifdef LOADGEN_TLS
    SSL *ssl;         /* with --tls */
#endif
} conn_t;

static conn_t *conns;
static int nconns = 50;
static size_t msg_size = 64;
static int pipeline = 1;
static double seconds = 5.0;
static double warmup = 0.0;
static double setup_timeout = 30.0;
static int sync_mode = 0;
static int length_prefix = 0;
static unsigned char hdr[4];  /* the length prefix of every message (--length-prefix) */
static size_t hdr_len = 0;    /* 4 with --length-prefix, else 0 */
static size_t wire_size = 0;  /* hdr_len + msg_size: one message on the wire */
static const char *host = "127.0.0.1";
static int port = 0;

static int epfd = -1;
static unsigned char *pool;
static unsigned char *rbuf;
static int phase = PH_SETUP;
static int stopping = 0;
static int opened = 0;
static int ready = 0;
static uint64_t measured = 0;
static uint64_t errors = 0;
static double t_start = 0.0, t_end = 0.0;
static struct sockaddr_in addr;
static int use_tls = 0;
#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
static unsigned char *txbuf; /* one SSL_write's messages, gathered */
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_result(void) {
    double secs = 0.0;
    if (phase >= PH_MEASURE) {
        secs = (phase == PH_MEASURE ? now_s() : t_end) - t_start;
    }
    double qps = secs > 0.0 ? (double)measured / secs : 0.0;
    printf("{\"messages\": %llu, \"seconds\": %.6f, \"qps\": %.1f, \"errors\": %llu}\n",
           (unsigned long long)measured, secs, qps, (unsigned long long)errors);
    fflush(stdout);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    errors++;
    print_result();
    exit(1);
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Start of message k of connection c inside the pool. */
static inline const unsigned char *msg_ptr(int c, uint64_t k) {
    return pool + (splitmix64(((uint64_t)c << 40) ^ k) & (POOL_SPAN - 1));
}

static void set_events(conn_t *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data = {.u32 = (uint32_t)(c - conns)}};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e) < 0) fatal("epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

static void open_conn(int i) {
    conn_t *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fatal("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = {.events = EPOLLOUT, .data = {.u32 = (uint32_t)i}};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0) fatal("epoll_ctl: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        fatal("connect (conn %d): %s", i, strerror(errno));
    opened++;
}

static void open_more(void) {
    while (opened < nconns && opened - ready < SETUP_WINDOW) open_conn(opened);
}

#ifdef LOADGEN_TLS
static const char *tls_error(void) {
    unsigned long e = ERR_get_error();
    return e ? ERR_error_string(e, NULL) : strerror(errno);
}

/* SSL_write of the gathered iovecs; -1 with errno EAGAIN when OpenSSL must wait. */
static ssize_t tls_writev(conn_t *c, const struct iovec *iov, int cnt) {
    size_t off = 0;
    for (int i = 0; i < cnt; i++) {
        memcpy(txbuf + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    ERR_clear_error();
    int r = SSL_write(c->ssl, txbuf, (int)off);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        errno = EAGAIN;
        return -1;
    }
    fatal("SSL_write (conn %d): %s", (int)(c - conns), tls_error());
}

static void do_handshake(conn_t *c);
#endif

/* Send as much as allowed: up to `pipeline` messages in flight, or only the rest of a
 * partially sent message once stopping. */
static void pump(conn_t *c) {
    int ci = (int)(c - conns);
    for (;;) {
        uint64_t limit = stopping ? c->tx_seq + (c->tx_pos > 0) : c->rx_seq + (uint64_t)pipeline;
        if (c->tx_seq >= limit) break;
        struct iovec iov[MAX_IOV];
        int cnt = 0;
        size_t total = 0;
        for (uint64_t k = c->tx_seq; k < limit; k++) {
            size_t skip = (k == c->tx_seq) ? c->tx_pos : 0;
            const unsigned char *payload = msg_ptr(ci, k);
            if (skip < hdr_len) { /* header (or its rest), then the whole payload */
                if (cnt + 2 > MAX_IOV) break;
                iov[cnt].iov_base = hdr + skip;
                iov[cnt].iov_len = hdr_len - skip;
                cnt++;
                iov[cnt].iov_base = (void *)payload;
                iov[cnt].iov_len = msg_size;
                cnt++;
            } else {
                if (cnt + 1 > MAX_IOV) break;
                iov[cnt].iov_base = (void *)(payload + (skip - hdr_len));
                iov[cnt].iov_len = wire_size - skip;
                cnt++;
            }
            total += wire_size - skip;
        }
#ifdef LOADGEN_TLS
        ssize_t n = use_tls ? tls_writev(c, iov, cnt) : writev(c->fd, iov, cnt);
#else
        ssize_t n = writev(c->fd, iov, cnt);
#endif
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return;
            }
            fatal("write (conn %d): %s", ci, strerror(errno));
        }
        size_t left = (size_t)n;
        while (left > 0) {
            size_t rem = wire_size - c->tx_pos;
            if (left >= rem) {
                left -= rem;
                c->tx_seq++;
                c->tx_pos = 0;
            } else {
                c->tx_pos += left;
                left = 0;
            }
        }
        if ((size_t)n < total) {
            set_events(c, EPOLLIN | EPOLLOUT);
            return;
        }
    }
    set_events(c, EPOLLIN);
}

/* Verify `n` received bytes; returns the messages they completed. */
static int consume(conn_t *c, const unsigned char *p, size_t n) {
    int ci = (int)(c - conns);
    size_t left = n;
    int completed = 0;
    while (left > 0) {
        size_t avail;
        if (c->rx_seq < c->tx_seq) avail = wire_size - c->rx_pos;
        else if (c->rx_seq == c->tx_seq) avail = c->tx_pos - c->rx_pos;
        else avail = 0;
        if (avail == 0)
            fatal("conn %d: received %zu bytes more than were sent", ci, left);
        size_t take = left < avail ? left : avail;
        for (size_t off = 0; off < take;) { /* at most two pieces: header, payload */
            size_t pos = c->rx_pos + off;
            const unsigned char *want;
            size_t seg;
            if (pos < hdr_len) {
                want = hdr + pos;
                seg = hdr_len - pos;
            } else {
                want = msg_ptr(ci, c->rx_seq) + (pos - hdr_len);
                seg = wire_size - pos;
            }
            if (seg > take - off) seg = take - off;
            if (memcmp(p + off, want, seg) != 0) {
                size_t at = 0;
                while (p[off + at] == want[at]) at++;
                fatal("conn %d: verification failed in message %llu at byte %zu "
                      "(got 0x%02x, want 0x%02x)", ci, (unsigned long long)c->rx_seq,
                      pos + at, p[off + at], want[at]);
            }
            off += seg;
        }
        p += take;
        left -= take;
        c->rx_pos += take;
        if (c->rx_pos == wire_size) {
            c->rx_pos = 0;
            c->rx_seq++;
            completed++;
            if (c->rx_seq == 1) ready++;
        }
    }
    return completed;
}

static void on_readable(conn_t *c) {
    int ci = (int)(c - conns);
    int completed = 0;
#ifdef LOADGEN_TLS
    if (use_tls) {
        for (;;) { /* until OpenSSL wants more: nothing may wait inside it */
            ERR_clear_error();
            int r = SSL_read(c->ssl, rbuf, RBUF_SIZE);
            if (r > 0) {
                completed += consume(c, rbuf, (size_t)r);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
            if (e == SSL_ERROR_ZERO_RETURN) fatal("conn %d: server closed the connection", ci);
            fatal("SSL_read (conn %d): %s", ci, tls_error());
        }
    } else
#endif
    {
        ssize_t n;
        for (;;) {
            n = read(c->fd, rbuf, RBUF_SIZE);
            if (n >= 0) break;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            fatal("read (conn %d): %s", ci, strerror(errno));
        }
        if (n == 0) fatal("conn %d: server closed the connection", ci);
        completed = consume(c, rbuf, (size_t)n);
    }
    if (completed) {
        if (phase == PH_MEASURE) measured += (uint64_t)completed;
        pump(c);
        if (phase == PH_SETUP) open_more();
    }
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) fatal("connect (conn %d): %s", (int)(c - conns), strerror(err));
#ifdef LOADGEN_TLS
    if (use_tls) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) fatal("SSL_new: %s", tls_error());
        SSL_set_connect_state(c->ssl);
        c->state = ST_HANDSHAKE;
        do_handshake(c);
        return;
    }
#endif
    c->state = ST_ACTIVE;
    pump(c);
}

#ifdef LOADGEN_TLS
static void do_handshake(conn_t *c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->state = ST_ACTIVE;
        pump(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) set_events(c, EPOLLIN);
    else if (e == SSL_ERROR_WANT_WRITE) set_events(c, EPOLLIN | EPOLLOUT);
    else fatal("TLS handshake (conn %d): %s", (int)(c - conns), tls_error());
}
#endif

static int all_drained(void) {
    for (int i = 0; i < nconns; i++) {
        if (conns[i].rx_seq != conns[i].tx_seq || conns[i].rx_pos != 0 || conns[i].tx_pos != 0)
            return 0;
    }
    return 1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --host H --port N --conns C --size S --seconds T\n"
            "               [--warmup W] [--pipeline P] [--setup-timeout X] [--sync]\n"
            "               [--length-prefix] [--tls]\n");
    exit(2);
}

static void parse_args(int argc, char **argv) {
    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},    {"size", required_argument, 0, 's'},
        {"seconds", required_argument, 0, 't'},  {"warmup", required_argument, 0, 'w'},
        {"pipeline", required_argument, 0, 'P'}, {"setup-timeout", required_argument, 0, 'x'},
        {"sync", no_argument, 0, 'y'},           {"length-prefix", no_argument, 0, 'L'},
        {"tls", no_argument, 0, 'T'},            {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': msg_size = (size_t)strtoull(optarg, NULL, 10); break;
        case 't': seconds = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'P': pipeline = atoi(optarg); break;
        case 'x': setup_timeout = atof(optarg); break;
        case 'y': sync_mode = 1; break;
        case 'L': length_prefix = 1; break;
        case 'T': use_tls = 1; break;
        default: usage();
        }
    }
    if (optind != argc || port <= 0 || port > 65535 || nconns <= 0 || msg_size == 0 ||
        msg_size > (16u << 20) || seconds <= 0.0 || warmup < 0.0 || pipeline <= 0 ||
        setup_timeout <= 0.0)
        usage();
    if (length_prefix) {
        hdr_len = sizeof hdr;
        hdr[0] = (unsigned char)(msg_size >> 24);
        hdr[1] = (unsigned char)(msg_size >> 16);
        hdr[2] = (unsigned char)(msg_size >> 8);
        hdr[3] = (unsigned char)msg_size;
    }
    wire_size = hdr_len + msg_size;
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)nconns + 16)
        fatal("RLIMIT_NOFILE %llu is too low for %d connections",
              (unsigned long long)rl.rlim_cur, nconns);
}

static void wait_for_go(void) {
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    if (poll(&pfd, 1, SYNC_WAIT_MS) > 0) {
        char tmp[64];
        ssize_t r = read(0, tmp, sizeof tmp);
        (void)r;
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)(setup_timeout + warmup + seconds + 30.0));
    raise_nofile();

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) fatal("bad IPv4 address: %s", host);

    /* Random pool: POOL_SPAN start offsets, each followed by msg_size bytes. */
    size_t pool_len = (POOL_SPAN + msg_size + 7) & ~(size_t)7;
    pool = malloc(pool_len);
    rbuf = malloc(RBUF_SIZE);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!pool || !rbuf || !conns) fatal("out of memory");
    uint64_t x = 0x2545F4914F6CDD1DULL;
    for (size_t i = 0; i < pool_len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(pool + i, &x, 8);
    }

    if (use_tls) {
#ifdef LOADGEN_TLS
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx) fatal("SSL_CTX_new: %s", tls_error());
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        txbuf = malloc((size_t)MAX_IOV * wire_size);
        if (!txbuf) fatal("out of memory");
#else
        fatal("--tls: this loadgen was built without OpenSSL (cc -DLOADGEN_TLS ... -lssl "
              "-lcrypto)");
#endif
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) fatal("epoll_create1: %s", strerror(errno));

    struct epoll_event evs[MAX_EVENTS];
    double t0 = now_s();
    double setup_deadline = t0 + setup_timeout;
    double warm_end = 0.0, drain_deadline = 0.0;
    open_more();

    for (;;) {
        double now = now_s();
        double next = now + 0.1;
        if (phase == PH_SETUP) {
            if (ready == nconns) {
                phase = PH_WARMUP;
                warm_end = now + warmup;
            } else if (now >= setup_deadline) {
                fatal("setup timeout: %d of %d connections completed a first echo", ready,
                      nconns);
            } else if (setup_deadline < next) {
                next = setup_deadline;
            }
        }
        if (phase == PH_WARMUP) {
            if (now >= warm_end) {
                phase = PH_MEASURE;
                t_start = now;
                measured = 0;
                if (sync_mode) {
                    fputs("#start\n", stderr);
                    fflush(stderr);
                }
            } else if (warm_end < next) {
                next = warm_end;
            }
        }
        if (phase == PH_MEASURE) {
            if (now >= t_start + seconds) {
                t_end = now;
                phase = PH_DRAIN;
                stopping = 1;
                drain_deadline = now + DRAIN_SECONDS;
                if (sync_mode) {
                    fputs("#end\n", stderr);
                    fflush(stderr);
                }
            } else if (t_start + seconds < next) {
                next = t_start + seconds;
            }
        }
        if (phase == PH_DRAIN) {
            if (all_drained()) break;
            if (now >= drain_deadline) {
                uint64_t lost = 0;
                for (int i = 0; i < nconns; i++)
                    lost += conns[i].tx_seq - conns[i].rx_seq + (conns[i].tx_pos > 0);
                fatal("drain timeout: %llu messages never came back",
                      (unsigned long long)lost);
            }
        }
        int timeout_ms = (int)((next - now) * 1000.0) + 1;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fatal("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u32];
            uint32_t ev = evs[i].events;
            if (c->state == ST_CONNECTING) {
                on_connected(c);
                continue;
            }
#ifdef LOADGEN_TLS
            if (c->state == ST_HANDSHAKE) {
                do_handshake(c);
                continue;
            }
#endif
            if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (ev & EPOLLOUT) pump(c);
        }
    }

    if (sync_mode) wait_for_go();
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    print_result();
    return measured > 0 && errors == 0 ? 0 : 1;
}
