/* The floor of a ring with ring://'s record shape (benchmarks/bench_ring_c.py, rows "C SPSC floor"):
 * two processes ping-pong 64 B messages over two minimal lock-free single-producer single-consumer
 * rings in one shared mapping, busy-spinning. No locks, no journals, no counters, no waiter words,
 * no range checks, no futex: what is left is the record traffic itself — a 16-byte record header
 * {u32 len, u32 flags, u64 total} + 64 B payload (80 bytes, two cache lines at most offsets), the
 * producer writing it and publishing a commit, the consumer waiting for the commit, copying the
 * payload out and publishing its head. So (C↔C ring) / (this) is what the ring's software costs,
 * and (this) / (C spin line) what the record shape costs on this machine.
 *
 *   spsc_floor tail N [B]   the commit is a separate tail word on its own line (ring://'s layout)
 *   spsc_floor tailj N [B]  "tail" with ring://'s publish: a journal and a message count stored
 *                           before the commit (a seq_cst exchange) and the journal cleared after it,
 *                           on the tail line as in ring layout v2 (four more stores to the line the
 *                           consumer spins on, one after the commit) ...
 *   spsc_floor tailjs N [B] ... or on a line of their own as in v3 (neither is a bench_ring_c.py row)
 *   spsc_floor rec N [B]    the commit is in the record header (a sequence word: the record's own
 *                           byte position, so a record of an earlier lap never looks committed);
 *                           the consumer spins on the record line, head is read only when full
 *
 * A fourth argument A (default 16, ring://'s) aligns every record to A bytes: with 64, a record
 * starts on a cache line of its own (80 -> 128 bytes), so no line holds the end of one record
 * and the start of the next (not ring://'s shape: what a line-aligned layout would buy).
 *
 * Prints ns per round trip: the mean over N, or with B (0: none) the median over batches of B.
 *     gcc -O2 -o spsc_floor spsc_floor.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CAP (64u * 1024u)
#define PAYLOAD 64u
#define REC 16u

struct rec {
    uint32_t len, flags;
    uint64_t total; /* "rec" mode: the record's byte position + 1 (the commit word) */
};

struct ring {
    _Alignas(64) uint64_t tail; /* "tail" mode: the commit */
    struct journal {
        uint64_t msgs, jvalid, jtail, jmsgs;
    } j;                    /* "tailj" mode: on the tail line */
    _Alignas(64) struct journal js; /* "tailjs" mode: a line of its own */
    _Alignas(64) uint64_t head;
    _Alignas(64) unsigned char data[CAP];
};

struct side { /* one process's private view of one ring */
    struct ring *r;
    uint64_t pos, other; /* producer: tail, cached head; consumer: head, cached tail */
};

static int rec_mode, journal;
static uint64_t rec_need = REC + PAYLOAD; /* the record's size: 16 B header + payload, aligned (argv[4]) */

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

static void send(struct side *s, const unsigned char *msg)
{
    uint64_t off = s->pos % CAP, pad = off + rec_need > CAP ? CAP - off : 0;
    while (s->pos + pad + rec_need - s->other > CAP) { /* full by the cached head: read the live one */
        s->other = __atomic_load_n(&s->r->head, __ATOMIC_ACQUIRE);
        if (s->pos + pad + rec_need - s->other > CAP)
            __builtin_ia32_pause();
    }
    if (pad) {
        struct rec *p = (struct rec *)(s->r->data + off);
        p->len = (uint32_t)(pad - REC);
        p->flags = 4;
        if (rec_mode)
            __atomic_store_n(&p->total, s->pos + 1, __ATOMIC_RELEASE);
        s->pos += pad;
        off = 0;
    }
    struct rec *rc = (struct rec *)(s->r->data + off);
    memcpy(s->r->data + off + REC, msg, PAYLOAD);
    rc->len = PAYLOAD;
    rc->flags = 3;
    s->pos += rec_need;
    if (rec_mode)
        __atomic_store_n(&rc->total, s->pos - rec_need + 1, __ATOMIC_RELEASE);
    else {
        rc->total = PAYLOAD;
        if (journal) {
            struct journal *j = journal == 1 ? &s->r->j : &s->r->js;
            j->jtail = s->pos;
            j->jmsgs = j->msgs + 1;
            __atomic_store_n(&j->jvalid, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&j->msgs, j->jmsgs, __ATOMIC_RELAXED);
            __atomic_exchange_n(&s->r->tail, s->pos, __ATOMIC_SEQ_CST);
            __atomic_store_n(&j->jvalid, 0, __ATOMIC_RELAXED);
        } else {
            __atomic_store_n(&s->r->tail, s->pos, __ATOMIC_RELEASE);
        }
    }
}

static void recv(struct side *s, unsigned char *buf)
{
    for (;;) {
        uint64_t off = s->pos % CAP;
        struct rec *rc = (struct rec *)(s->r->data + off);
        if (rec_mode) {
            while (__atomic_load_n(&rc->total, __ATOMIC_ACQUIRE) != s->pos + 1)
                __builtin_ia32_pause();
        } else {
            while (s->other == s->pos) {
                s->other = __atomic_load_n(&s->r->tail, __ATOMIC_ACQUIRE);
                if (s->other == s->pos)
                    __builtin_ia32_pause();
            }
        }
        uint32_t len = rc->len, flags = rc->flags;
        uint64_t next = s->pos + ((flags & 4) ? REC + len : rec_need);
        if (flags & 4) {
            s->pos = next;
            continue;
        }
        memcpy(buf, s->r->data + off + REC, len < PAYLOAD ? len : PAYLOAD);
        s->pos = next;
        __atomic_store_n(&s->r->head, next, __ATOMIC_RELEASE);
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "tail") && strcmp(argv[1], "tailj") && strcmp(argv[1], "tailjs") &&
                     strcmp(argv[1], "rec")))
        return 64;
    rec_mode = !strcmp(argv[1], "rec");
    journal = !strcmp(argv[1], "tailj") ? 1 : !strcmp(argv[1], "tailjs") ? 2 : 0;
    long n = atol(argv[2]), b = argc >= 4 ? atol(argv[3]) : 0, align = argc >= 5 ? atol(argv[4]) : 16;
    if (align < 16 || align > 4096 || (align & (align - 1)))
        return 64;
    rec_need = (REC + PAYLOAD + (uint64_t)align - 1) & ~((uint64_t)align - 1);
    struct ring *rings = mmap(NULL, 2 * sizeof(struct ring), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rings == MAP_FAILED)
        return 2;
    unsigned char msg[PAYLOAD], buf[PAYLOAD];
    memset(msg, 'x', sizeof msg);
    long warm = n / 10 > 100 ? n / 10 : 100;
    pid_t child = fork();
    if (child == 0) { /* the echo: recv on ring 0, send it back on ring 1 */
        struct side in = {&rings[0], 0, 0}, out = {&rings[1], 0, 0};
        for (long i = 0; i < n + warm; i++) {
            recv(&in, buf);
            send(&out, buf);
        }
        _exit(0);
    }
    struct side out = {&rings[0], 0, 0}, in = {&rings[1], 0, 0};
    double *bt = b > 0 ? malloc(sizeof(double) * (size_t)(n / b + 1)) : NULL;
    long nb = 0;
    double t = 0, t0 = 0;
    for (long i = 0; i < warm + n; i++) {
        if (i == warm)
            t = t0 = now();
        else if (bt && i > warm && (i - warm) % b == 0) {
            double tn = now();
            bt[nb++] = tn - t0;
            t0 = tn;
        }
        send(&out, msg);
        recv(&in, buf);
    }
    double dt = now() - t;
    waitpid(child, NULL, 0);
    if (bt && nb) {
        qsort(bt, (size_t)nb, sizeof *bt, cmp_double);
        printf("%.1f\n", bt[nb / 2] / (double)b * 1e9);
    } else {
        printf("%.1f\n", dt / n * 1e9);
    }
    return 0;
}
