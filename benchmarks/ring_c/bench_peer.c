/* C side of benchmarks/bench_ring_c.py (built with the documented line:
 *     gcc -O2 bench_peer.c -I"$(python -m kipc --include)" -lpthread)
 *
 *   bench_peer spin N [B]           64 B round trips on one shared cache line between this
 *                                   process and a forked child, busy-spinning: prints ns/round trip
 *   bench_peer echo REQ REP N       attach both rings; N times: recv a message on REQ, send it on REP
 *   bench_peer client REQ REP N W [B]  attach; W warm-up then N round trips of 64 B: prints ns/round trip
 *   bench_peer pair NAME N W [B]    create rings NAME-req and NAME-rep here (C API), fork an echo that
 *                                   attaches them, then run the client: the C↔C row with no Python in
 *                                   it, so a bench_peer built from another tree's kipc_ring.h (another
 *                                   ring layout version) measures that tree (bench_ring_c.py --baseline)
 *
 * With B (a batch size), the N round trips are timed in batches of B and what is printed is the
 * median over the batches of ns per round trip: on a loaded machine a preempted batch moves the
 * mean by orders of magnitude but the median hardly (bench_ring_c.py --median).
 */
#include "kipc_ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of n batch times (seconds) as ns per round trip of a batch of b. */
static double median_ns(double *t, long n, long b)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2] / (double)b * 1e9;
}

static kipc_ring *attach(const char *name)
{
    kipc_ring *r;
    int rc = kipc_ring_open(name, NULL, &r);
    if (rc) {
        fprintf(stderr, "open %s: %s\n", name, kipc_ring_strerror(rc));
        exit(2);
    }
    return r;
}

static void check(int rc, kipc_ring *r)
{
    if (rc) {
        fprintf(stderr, "ring: %s %s\n", kipc_ring_strerror(rc), kipc_ring_detail(r));
        exit(3);
    }
}

static void echo(kipc_ring *req, kipc_ring *rep, long n)
{
    char buf[65536];
    size_t len;
    for (long i = 0; i < n; i++) {
        check(kipc_ring_recv(req, buf, sizeof buf, &len, 60.0), req);
        check(kipc_ring_send(rep, buf, len, 60.0), rep);
    }
}

/* W warm-up then N round trips of 64 B; ns per round trip (the median of batches of B if B > 0) */
static double client(kipc_ring *req, kipc_ring *rep, long n, long w, long b)
{
    double *bt = b > 0 ? malloc(sizeof(double) * (size_t)(n / b + 1)) : NULL;
    long nb = 0;
    char msg[64], buf[64];
    size_t len;
    memset(msg, 'x', sizeof msg);
    double t = 0, t0 = 0;
    for (long i = 0; i < w + n; i++) {
        if (i == w)
            t = t0 = now();
        else if (bt && i > w && (i - w) % b == 0) {
            double tn = now();
            bt[nb++] = tn - t0;
            t0 = tn;
        }
        check(kipc_ring_send(req, msg, sizeof msg, 60.0), req);
        check(kipc_ring_recv(rep, buf, sizeof buf, &len, 60.0), rep);
    }
    double ns = bt && nb ? median_ns(bt, nb, b) : (now() - t) / n * 1e9;
    free(bt);
    return ns;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "spin")) {
        long n = atol(argv[2]), b = argc >= 4 ? atol(argv[3]) : 0;
        double *bt = b > 0 ? malloc(sizeof(double) * (size_t)(n / b + 1)) : NULL;
        long nb = 0;
        double t0 = 0;
        /* a 64-byte message's worth of line: the sequence word plus the payload beside it */
        volatile uint64_t *line = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        line[0] = 0;
        pid_t child = fork();
        if (child == 0) {
            for (uint64_t i = 1;; i += 2) {
                while (__atomic_load_n(&line[0], __ATOMIC_ACQUIRE) != i)
                    __builtin_ia32_pause();
                line[1] = line[1] + 1; /* touch the payload too */
                __atomic_store_n(&line[0], i + 1, __ATOMIC_RELEASE);
                if (i + 1 >= (uint64_t)(2 * n))
                    _exit(0);
            }
        }
        double t = now();
        for (uint64_t i = 1; i < (uint64_t)(2 * n); i += 2) {
            if (bt && (i / 2) % (uint64_t)b == 0) {
                double tn = now();
                if (i > 1)
                    bt[nb++] = tn - t0;
                t0 = tn;
            }
            line[1] = i;
            __atomic_store_n(&line[0], i, __ATOMIC_RELEASE);
            while (__atomic_load_n(&line[0], __ATOMIC_ACQUIRE) != i + 1)
                __builtin_ia32_pause();
        }
        double dt = now() - t;
        waitpid(child, NULL, 0);
        printf("%.1f\n", bt && nb ? median_ns(bt, nb, b) : dt / n * 1e9);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "echo")) {
        kipc_ring *req = attach(argv[2]), *rep = attach(argv[3]);
        printf("ready\n");
        echo(req, rep, atol(argv[4]));
        kipc_ring_close(req);
        kipc_ring_close(rep);
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "client")) {
        kipc_ring *req = attach(argv[2]), *rep = attach(argv[3]);
        printf("%.1f\n", client(req, rep, atol(argv[4]), atol(argv[5]), argc >= 7 ? atol(argv[6]) : 0));
        kipc_ring_close(req);
        kipc_ring_close(rep);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "pair")) {
        long n = atol(argv[3]), w = atol(argv[4]), b = argc >= 6 ? atol(argv[5]) : 0;
        char names[2][200];
        kipc_ring *ring[2];
        kipc_ring_options o = {KIPC_RING_CREATE, 1 << 16, -1.0, 0};
        for (int i = 0; i < 2; i++) {
            snprintf(names[i], sizeof names[i], "%s-%s", argv[2], i ? "rep" : "req");
            int rc = kipc_ring_open(names[i], &o, &ring[i]);
            if (rc) {
                fprintf(stderr, "create %s: %s %s\n", names[i], kipc_ring_strerror(rc), kipc_ring_detail(NULL));
                return 2;
            }
        }
        pid_t child = fork();
        if (child < 0)
            return 2;
        if (child == 0) { /* own handles, attached by name; the creator's are left alone (no close) */
            kipc_ring *req = attach(names[0]), *rep = attach(names[1]);
            echo(req, rep, n + w);
            kipc_ring_close(req);
            kipc_ring_close(rep);
            _exit(0);
        }
        double ns = client(ring[0], ring[1], n, w, b);
        int st = 0;
        waitpid(child, &st, 0);
        kipc_ring_close(ring[0]);
        kipc_ring_close(ring[1]);
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            return 3;
        printf("%.1f\n", ns);
        return 0;
    }
    return 64;
}
