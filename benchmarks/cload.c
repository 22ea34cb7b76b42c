/* cload: the benchmark's load generator in C (built on the fly by benchmarks/cload.py).
 *
 * An independent peer: plain UDP, or DTLS 1.2 on the *system* OpenSSL (libssl), never the
 * OpenSSL inside the Python process under test. It prints one JSON object on stdout.
 *
 *   cload echo       --proto udp|dtls --port P --sessions S --window W --size B
 *                    --warmup SEC --seconds SEC --loss-timeout SEC [common options]
 *   cload handshakes --port P --concurrency C --seconds SEC [--count N] [--keep] [common]
 *
 *   cload window     --elapsed SEC --seconds SEC --work N --min-work N --ticks T --min-ticks T
 *                    (prints the window rule's verdict for these readings: for its tests)
 *
 * Common options: --server-pid PID (its CPU time is read from /proc over the measured
 * interval), --first-address K and --addresses A (source addresses are the K-th .. K+A-1-th
 * of the 127.x.y.z sequence of benchmarks/common.py source_address), --buffer BYTES
 * (SO_RCVBUF/SO_SNDBUF), --cpu N (pin this process to CPU N), --min-work N and --min-ticks T
 * (the window rule below; both 0 by default: a window of wall time only).
 *
 * The window rule (window_state; benchmarks/common.py window_state is the same rule): a
 * measured interval ends once SEC seconds of wall time have passed AND it saw at least N units
 * of work (echo replies, completed handshakes) AND at least T clock ticks of server CPU time
 * (/proc counts in ticks of 10 ms: under load a short window may hold none). While either is
 * missing it goes on, up to WINDOW_LIMIT x SEC; a window that reaches that limit still short is
 * "starved": the JSON says so ("starved": true) and the caller reports the figure as failed.
 *
 * echo: S sessions (one socket each, each from its own source address) each keep W messages
 * of B bytes in flight; a reply lets the next message of its slot go; a message unanswered
 * after the loss timeout is counted lost and its slot re-used. Replies received during the
 * measured seconds (after the warm-up) count, with their round-trip times.
 *
 * handshakes: C new DTLS handshakes at a time (cookie exchange as the server asks), each from
 * the next source address; a completed one sends close_notify and is closed (with --keep: it is
 * dropped silently, so the server keeps the session). Runs for SEC seconds, or until N
 * handshakes completed (--count). A handshake taking over 10 s is counted failed.
 *
 * Every loop is bounded by the deadline; every error is counted, never fatal mid-run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HANDSHAKE_GIVE_UP 10.0
#define MAX_READS_PER_WAKE 64
#define MAX_EVENTS 256
#define WINDOW_LIMIT 10.0 /* a measured window lasts at most this many times --seconds */
#define WINDOW_STEP 0.01  /* how far an unfinished window is carried on at a time (one tick) */

enum { WINDOW_OPEN, WINDOW_DONE, WINDOW_STARVED };

/* The window rule (see the top of this file): pure, so that `cload window` can test it. */
static int window_state(double elapsed, double wanted, long work, long min_work, long ticks,
                        long min_ticks) {
    if (elapsed < wanted) return WINDOW_OPEN;
    if (work >= min_work && ticks >= min_ticks) return WINDOW_DONE;
    if (elapsed >= WINDOW_LIMIT * wanted) return WINDOW_STARVED;
    return WINDOW_OPEN;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* -- options ------------------------------------------------------------------------------ */

static const char *mode = "";
static const char *proto = "dtls";
static int port = 0, sessions = 4, window = 8, size = 64, concurrency = 16, keep = 0;
static long count_limit = 0, first_address = 0, addresses = 60000;
static double warmup = 0.5, seconds = 5.0, loss_timeout = 1.0;
static int server_pid = 0, buffer_bytes = 0, cpu = -1;
static long min_work = 0, min_ticks = 0, work_reading = 0, ticks_reading = 0;
static double elapsed_reading = 0.0;

static void usage(void) {
    fprintf(stderr, "usage: cload echo|handshakes [options] (see the source)\n");
    exit(2);
}

static void parse(int argc, char **argv) {
    if (argc < 2) usage();
    mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *name = argv[i];
        if (i + 1 >= argc && strcmp(name, "--keep") != 0) usage();
        if (!strcmp(name, "--keep")) { keep = 1; continue; }
        const char *value = argv[++i];
        if (!strcmp(name, "--proto")) proto = value;
        else if (!strcmp(name, "--port")) port = atoi(value);
        else if (!strcmp(name, "--sessions")) sessions = atoi(value);
        else if (!strcmp(name, "--window")) window = atoi(value);
        else if (!strcmp(name, "--size")) size = atoi(value);
        else if (!strcmp(name, "--concurrency")) concurrency = atoi(value);
        else if (!strcmp(name, "--count")) count_limit = atol(value);
        else if (!strcmp(name, "--first-address")) first_address = atol(value);
        else if (!strcmp(name, "--addresses")) addresses = atol(value);
        else if (!strcmp(name, "--warmup")) warmup = atof(value);
        else if (!strcmp(name, "--seconds")) seconds = atof(value);
        else if (!strcmp(name, "--loss-timeout")) loss_timeout = atof(value);
        else if (!strcmp(name, "--server-pid")) server_pid = atoi(value);
        else if (!strcmp(name, "--buffer")) buffer_bytes = atoi(value);
        else if (!strcmp(name, "--cpu")) cpu = atoi(value);
        else if (!strcmp(name, "--min-work")) min_work = atol(value);
        else if (!strcmp(name, "--min-ticks")) min_ticks = atol(value);
        else if (!strcmp(name, "--elapsed")) elapsed_reading = atof(value);
        else if (!strcmp(name, "--work")) work_reading = atol(value);
        else if (!strcmp(name, "--ticks")) ticks_reading = atol(value);
        else usage();
    }
    if (port < 0 || sessions < 1 || window < 1 || size < 8 || size > 16384 || concurrency < 1
        || addresses < 1 || seconds <= 0 || min_work < 0 || min_ticks < 0)
        usage();
    if (strcmp(mode, "window") != 0 && port <= 0) usage();
}

/* -- CPU readings ------------------------------------------------------------------------- */

static double process_cpu_s(int pid) {
    char path[64], text[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1.0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *p = strrchr(text, ')');
    if (!p) return -1.0;
    p += 2; /* the state field */
    unsigned long utime = 0, stime = 0;
    /* fields after the name: state(3) ... utime(14) stime(15) */
    for (int field = 3; field < 14 && p; field++) p = strchr(p, ' '), p = p ? p + 1 : p;
    if (!p || sscanf(p, "%lu %lu", &utime, &stime) != 2) return -1.0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* Clock ticks of server CPU time between two readings (they are whole ticks in /proc). */
static long server_ticks(double from_s, double to_s) {
    return (long)((to_s - from_s) * (double)sysconf(_SC_CLK_TCK) + 0.5);
}

static double own_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
           + ru.ru_stime.tv_usec / 1e6;
}

static double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0.0;
    unsigned long long v[10] = {0};
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                     &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (got < 4) return 0.0;
    unsigned long long total = 0;
    for (int i = 0; i < got; i++) total += v[i];
    total -= v[3] + (got > 4 ? v[4] : 0);     /* idle, iowait */
    total -= (got > 8 ? v[8] : 0) + (got > 9 ? v[9] : 0); /* guest: already in user */
    return (double)total / (double)sysconf(_SC_CLK_TCK);
}

struct meter { double wall, server, load, machine; };

static struct meter meter_now(void) {
    struct meter m = {now_s(), server_pid ? process_cpu_s(server_pid) : 0.0, own_cpu_s(),
                      machine_busy_s()};
    return m;
}

static void print_usage(struct meter a, struct meter b) {
    double wall = b.wall - a.wall, server = b.server - a.server, load = b.load - a.load;
    double other = b.machine - a.machine - server - load;
    if (other < 0) other = 0;
    if (wall <= 0) wall = 1e-9;
    printf("\"wall_s\": %.6f, \"server_cpu_s\": %.4f, \"load_cpu_s\": %.4f, \"other_cpu_s\": %.4f,"
           " \"server_cpu_share\": %.4f, \"load_cpu_share\": %.4f, \"other_cpu_share\": %.4f",
           wall, server, load, other, server / wall, load / wall, other / wall);
}

/* -- sockets ------------------------------------------------------------------------------ */

static void source_address(long index, char *out, size_t len) {
    long host = index / 254, low = index % 254;
    snprintf(out, len, "127.%ld.%ld.%ld", 1 + (host / 256) % 254, host % 256, low + 1);
}

static long next_address = 0;

/* A non-blocking UDP socket bound to the next source address, connected to the server. */
static int open_socket(void) {
    char host[32];
    source_address(first_address + (next_address++ % addresses), host, sizeof host);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (buffer_bytes > 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
    }
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, host, &local.sin_addr);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0
        || connect(fd, (struct sockaddr *)&server, sizeof server) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* -- DTLS --------------------------------------------------------------------------------- */

static SSL_CTX *client_context(void) {
    SSL_CTX *ctx = SSL_CTX_new(DTLS_client_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* the server's cost is the same */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every handshake is new */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

static SSL *client_ssl(SSL_CTX *ctx, int fd) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return NULL;
    BIO *bio = BIO_new_dgram(fd, BIO_NOCLOSE);
    if (!bio) { SSL_free(ssl); return NULL; }
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);
    BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &server);
    SSL_set_bio(ssl, bio, bio);
    DTLS_set_link_mtu(ssl, 1400);
    SSL_set_connect_state(ssl);
    return ssl;
}

static char cipher_name[128] = "";

/* -- JSON helpers ------------------------------------------------------------------------- */

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double quantile_ms(uint32_t *sorted_us, long n, double fraction) {
    if (n == 0) return 0.0;
    long rank = (long)((double)n * fraction + 0.999999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return sorted_us[rank - 1] / 1000.0;
}

struct samples { uint32_t *v; long n, cap; };

static void add_sample(struct samples *s, uint32_t value) {
    if (s->n == s->cap) {
        long cap = s->cap ? s->cap * 2 : 65536;
        uint32_t *grown = realloc(s->v, (size_t)cap * sizeof *grown);
        if (!grown) return; /* out of memory: this sample is not kept */
        s->v = grown;
        s->cap = cap;
    }
    s->v[s->n++] = value;
}

/* -- echo --------------------------------------------------------------------------------- */

struct slot { uint32_t seq; int busy; uint64_t sent_ns; };

struct session {
    int fd;
    SSL *ssl;
    struct slot *slots;
    uint32_t seq;
};

static long sent = 0, replies = 0, lost = 0, late = 0, send_failed = 0, errors = 0;
static struct samples rtts;

static int sending = 1; /* cleared when the measured window ends: no new messages after it */

static int send_message(struct session *s, int index, unsigned char *buffer, int dtls) {
    if (!sending) { s->slots[index].busy = 0; return 0; }
    struct slot *slot = &s->slots[index];
    slot->seq = ++s->seq;
    slot->busy = 1;
    slot->sent_ns = now_ns();
    uint32_t header[2] = {(uint32_t)index, slot->seq};
    memcpy(buffer, header, sizeof header);
    sent++;
    int n = dtls ? SSL_write(s->ssl, buffer, size) : (int)send(s->fd, buffer, (size_t)size, 0);
    if (n != size) {
        send_failed++; /* the slot stays busy: the loss timeout counts it */
        if (dtls) ERR_clear_error();
    }
    return 1;
}

static int establish(SSL_CTX *ctx, struct session *s) {
    double give_up = now_s() + HANDSHAKE_GIVE_UP;
    for (;;) {
        int rc = SSL_connect(s->ssl);
        if (rc == 1) return 0;
        int err = SSL_get_error(s->ssl, rc);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return -1;
        if (now_s() > give_up) return -1;
        struct timeval tv;
        int ms = 50;
        if (DTLSv1_get_timeout(s->ssl, &tv)) ms = (int)(tv.tv_sec * 1000 + tv.tv_usec / 1000) + 1;
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(s->fd, &readable);
        struct timeval wait = {ms / 1000, (ms % 1000) * 1000};
        if (select(s->fd + 1, &readable, NULL, NULL, &wait) == 0) DTLSv1_handle_timeout(s->ssl);
    }
    (void)ctx;
}

static int run_echo(void) {
    int dtls = strcmp(proto, "dtls") == 0;
    SSL_CTX *ctx = dtls ? client_context() : NULL;
    if (dtls && !ctx) { fprintf(stderr, "cload: no SSL_CTX\n"); return 1; }
    struct session *all = calloc((size_t)sessions, sizeof *all);
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    if (!all || epoll < 0) return 1;
    for (int i = 0; i < sessions; i++) {
        all[i].fd = open_socket();
        if (all[i].fd < 0) { perror("cload: socket"); return 1; }
        all[i].slots = calloc((size_t)window, sizeof *all[i].slots);
        if (dtls) {
            all[i].ssl = client_ssl(ctx, all[i].fd);
            if (!all[i].ssl || establish(ctx, &all[i]) < 0) {
                fprintf(stderr, "cload: handshake %d failed\n", i);
                ERR_print_errors_fp(stderr);
                return 1;
            }
            snprintf(cipher_name, sizeof cipher_name, "%s", SSL_get_cipher_name(all[i].ssl));
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(epoll, EPOLL_CTL_ADD, all[i].fd, &ev);
    }
    unsigned char *buffer = calloc(1, 65536);
    double start = now_s(), measure_start = start + warmup, measure_end = measure_start + seconds;
    double give_up = measure_end + loss_timeout;
    /* The window rule: past its seconds, a window short of replies or of server CPU ticks (a
     * loaded machine left the server or this client descheduled) goes on a tick at a time. */
    double measured_seconds = seconds;
    int starved = 0;
    uint64_t loss_ns = (uint64_t)(loss_timeout * 1e9);
    for (int i = 0; i < sessions; i++)
        for (int k = 0; k < window; k++) send_message(&all[i], k, buffer, dtls);
    struct meter before = {0}, after = {0};
    int measuring = 0, measured = 0;
    double next_scan = start + loss_timeout / 4;
    struct epoll_event events[MAX_EVENTS];
    while (1) {
        double t = now_s();
        if (!measuring && !measured && t >= measure_start) { before = meter_now(); measuring = 1; }
        if (measuring && t >= measure_end) {
            struct meter m = meter_now();
            int state = window_state(t - measure_start, seconds, replies, min_work,
                                     server_ticks(before.server, m.server), min_ticks);
            if (state == WINDOW_OPEN) {
                measure_end = t + WINDOW_STEP;
                give_up = measure_end + loss_timeout;
            } else {
                after = m;
                measuring = 0;
                measured = 1;
                measured_seconds = m.wall - measure_start;
                starved = state == WINDOW_STARVED;
                sending = 0;
            }
        }
        if (t >= give_up) break;
        if (!sending) { /* the window is over: stop when every slot is answered or lost */
            int busy = 0;
            for (int i = 0; i < sessions && !busy; i++)
                for (int k = 0; k < window; k++) if (all[i].slots[k].busy) { busy = 1; break; }
            if (!busy) break;
        }
        if (t >= next_scan) {
            uint64_t n = now_ns();
            for (int i = 0; i < sessions; i++)
                for (int k = 0; k < window; k++) {
                    struct slot *slot = &all[i].slots[k];
                    if (slot->busy && n - slot->sent_ns > loss_ns) {
                        lost++;
                        slot->busy = 0;
                        send_message(&all[i], k, buffer, dtls);
                    }
                }
            next_scan = t + loss_timeout / 4;
        }
        int ready = epoll_wait(epoll, events, MAX_EVENTS, 5);
        for (int e = 0; e < ready; e++) {
            struct session *s = &all[events[e].data.u32];
            for (int r = 0; r < MAX_READS_PER_WAKE; r++) {
                int n;
                if (dtls) {
                    n = SSL_read(s->ssl, buffer, 65536);
                    if (n <= 0) {
                        int err = SSL_get_error(s->ssl, n);
                        if (err != SSL_ERROR_WANT_READ) errors++;
                        ERR_clear_error();
                        break;
                    }
                } else {
                    n = (int)recv(s->fd, buffer, 65536, 0);
                    if (n < 0) { if (errno != EAGAIN && errno != EWOULDBLOCK) errors++; break; }
                }
                uint64_t arrived = now_ns();
                uint32_t header[2];
                if (n < 8) { late++; continue; }
                memcpy(header, buffer, sizeof header);
                if (header[0] >= (uint32_t)window || !s->slots[header[0]].busy
                    || s->slots[header[0]].seq != header[1]) {
                    late++;
                    continue;
                }
                struct slot *slot = &s->slots[header[0]];
                double at = (double)arrived / 1e9;
                if (measuring && at >= measure_start) { /* measuring: the window is open */
                    replies++;
                    uint64_t us = (arrived - slot->sent_ns) / 1000;
                    add_sample(&rtts, us > 0xffffffffull ? 0xffffffffu : (uint32_t)us);
                }
                slot->busy = 0;
                send_message(s, (int)header[0], buffer, dtls);
            }
        }
    }
    if (!measured) { after = meter_now(); if (!measuring) before = after; }
    for (int i = 0; i < sessions; i++)
        for (int k = 0; k < window; k++) if (all[i].slots[k].busy) lost++;
    qsort(rtts.v, (size_t)rtts.n, sizeof *rtts.v, compare_u32);
    printf("{\"generator\": \"c\", \"proto\": \"%s\", \"size\": %d, \"sessions\": %d, "
           "\"window\": %d, \"in_flight\": %d, \"sent\": %ld, \"replies\": %ld, \"lost\": %ld, "
           "\"late\": %ld, \"send_failed\": %ld, \"errors\": %ld, \"msgs_per_s\": %.2f, "
           "\"rtt_p50_ms\": %.4f, \"rtt_p99_ms\": %.4f, \"cipher\": \"%s\", "
           "\"server_cpu_us_per_op\": %.4f, \"starved\": %s, \"server_ticks\": %ld, ",
           proto, size, sessions, window, sessions * window, sent, replies, lost, late,
           send_failed, errors, replies / measured_seconds, quantile_ms(rtts.v, rtts.n, 0.5),
           quantile_ms(rtts.v, rtts.n, 0.99), cipher_name,
           replies ? 1e6 * (after.server - before.server) / (double)replies : 0.0,
           starved ? "true" : "false", server_ticks(before.server, after.server));
    print_usage(before, after);
    printf("}\n");
    for (int i = 0; i < sessions; i++) {
        if (all[i].ssl) { SSL_shutdown(all[i].ssl); SSL_free(all[i].ssl); }
        close(all[i].fd);
    }
    return 0;
}

/* -- handshakes --------------------------------------------------------------------------- */

struct attempt { int fd; SSL *ssl; double started; };

static long completed = 0, failed = 0, setup_failed = 0;
static struct samples latencies;

static int start_attempt(SSL_CTX *ctx, struct attempt *a, int epoll, uint32_t index) {
    a->fd = open_socket();
    if (a->fd < 0) { setup_failed++; return -1; }
    a->ssl = client_ssl(ctx, a->fd);
    if (!a->ssl) { close(a->fd); a->fd = -1; setup_failed++; return -1; }
    a->started = now_s();
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = index};
    epoll_ctl(epoll, EPOLL_CTL_ADD, a->fd, &ev);
    SSL_connect(a->ssl); /* sends the first ClientHello */
    ERR_clear_error();
    return 0;
}

static void end_attempt(struct attempt *a, int epoll, int success) {
    epoll_ctl(epoll, EPOLL_CTL_DEL, a->fd, NULL);
    if (success) {
        if (!cipher_name[0])
            snprintf(cipher_name, sizeof cipher_name, "%s", SSL_get_cipher_name(a->ssl));
        if (!keep) SSL_shutdown(a->ssl); /* close_notify: the server may forget the session */
    }
    ERR_clear_error();
    SSL_free(a->ssl);
    close(a->fd);
    a->ssl = NULL;
    a->fd = -1;
}

static int run_handshakes(void) {
    SSL_CTX *ctx = client_context();
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct attempt *all = calloc((size_t)concurrency, sizeof *all);
    if (!ctx || epoll < 0 || !all) return 1;
    double start = now_s(), end = start + seconds, stop_by = start + WINDOW_LIMIT * seconds;
    long started = 0;
    int open = 1, starved = 0; /* open: new handshakes still start (the window rule decides) */
    struct meter before = meter_now();
    for (int i = 0; i < concurrency; i++) {
        all[i].fd = -1;
        if (!count_limit || started < count_limit) {
            started++;
            start_attempt(ctx, &all[i], epoll, (uint32_t)i);
        }
    }
    struct epoll_event events[MAX_EVENTS];
    double next_timers = start + 0.01;
    while (1) {
        double t = now_s();
        int active = 0;
        for (int i = 0; i < concurrency; i++) active += all[i].fd >= 0;
        if (open && t >= end) {
            int state = count_limit ? WINDOW_DONE
                        : window_state(t - start, seconds, completed, min_work,
                                       server_ticks(before.server, meter_now().server),
                                       min_ticks);
            if (state == WINDOW_OPEN) end = t + WINDOW_STEP;
            else { open = 0; starved = state == WINDOW_STARVED; stop_by = t; }
        }
        if (!active) break;
        if (t >= stop_by + HANDSHAKE_GIVE_UP) break;
        int ready = epoll_wait(epoll, events, MAX_EVENTS, 10);
        for (int e = 0; e <= ready; e++) {
            int timers = e == ready || ready < 0;
            if (timers && now_s() < next_timers) break;
            for (int i = timers ? 0 : (int)events[e].data.u32;
                 i < (timers ? concurrency : (int)events[e].data.u32 + 1); i++) {
                struct attempt *a = &all[i];
                if (a->fd < 0) continue;
                if (timers) DTLSv1_handle_timeout(a->ssl);
                int rc = SSL_connect(a->ssl);
                int done = rc == 1, bad = 0;
                if (!done) {
                    int err = SSL_get_error(a->ssl, rc);
                    bad = err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
                    ERR_clear_error();
                }
                double at = now_s();
                if (!done && !bad && at - a->started > HANDSHAKE_GIVE_UP) bad = 1;
                if (done) {
                    completed++;
                    uint64_t us = (uint64_t)((at - a->started) * 1e6);
                    add_sample(&latencies, us > 0xffffffffull ? 0xffffffffu : (uint32_t)us);
                } else if (bad) {
                    failed++;
                }
                if (done || bad) {
                    end_attempt(a, epoll, done);
                    if (open && (!count_limit || started < count_limit)) {
                        started++;
                        start_attempt(ctx, a, epoll, (uint32_t)i);
                    }
                }
            }
            if (timers) next_timers = now_s() + 0.01;
        }
    }
    struct meter after = meter_now();
    qsort(latencies.v, (size_t)latencies.n, sizeof *latencies.v, compare_u32);
    printf("{\"generator\": \"c\", \"completed\": %ld, \"failed\": %ld, \"setup_failed\": %ld, "
           "\"concurrency\": %d, \"kept\": %s, \"per_s\": %.2f, \"latency_p50_ms\": %.3f, "
           "\"latency_p99_ms\": %.3f, \"cipher\": \"%s\", \"server_cpu_ms_per_op\": %.4f, "
           "\"starved\": %s, \"server_ticks\": %ld, ",
           completed, failed, setup_failed, concurrency, keep ? "true" : "false",
           completed / (after.wall - before.wall), quantile_ms(latencies.v, latencies.n, 0.5),
           quantile_ms(latencies.v, latencies.n, 0.99), cipher_name,
           completed ? 1e3 * (after.server - before.server) / (double)completed : 0.0,
           starved ? "true" : "false", server_ticks(before.server, after.server));
    print_usage(before, after);
    printf("}\n");
    return 0;
}

int main(int argc, char **argv) {
    parse(argc, argv);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set); /* best effort: a 1-CPU machine says no */
    }
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    if (!strcmp(mode, "echo")) return run_echo();
    if (!strcmp(mode, "handshakes")) return run_handshakes();
    if (!strcmp(mode, "window")) {
        static const char *names[] = {"open", "done", "starved"};
        printf("%s\n", names[window_state(elapsed_reading, seconds, work_reading, min_work,
                                            ticks_reading, min_ticks)]);
        return 0;
    }
    usage();
    return 2;
}
