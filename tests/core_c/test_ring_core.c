/* C-only unit tests of ring_core (no Python): `make test-c` builds them with gcc under
 * ASan+UBSan and runs them; tests/core_c/test_core_c.py does the same inside `make test`. */
#include "ring_harness.h"

#include <math.h>
#include <signal.h>
#include <sys/wait.h>

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void test_header_init_and_verify(void)
{
    size_t size = HDR_SIZE + 4096;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(rc_header_init(base, size, 0, 0, 0, 0, 0) != NULL); /* zeros: bad magic */
    CHECK(rc_header_init(base, size, 1, 3000, 1, 0, 0) != NULL); /* not a power of two */
    CHECK(rc_header_init(base, size, 1, 4096, 1, 0, 0) == NULL);
    CHECK(rc_header_init(base, size, 0, 0, 0, 0, 0) == NULL);
    struct ring_hdr *h = base;
    /* every other layout version is refused at attach (v2 had msgs_in and the journal on the
     * tail line: a v2 peer on a v3 ring would read and write the wrong words) */
    for (uint32_t v = 0; v <= RING_VERSION + 1; v++) {
        h->version = v;
        const char *why = rc_header_init(base, size, 0, 0, 0, 0, 0);
        CHECK(v == RING_VERSION ? why == NULL : why != NULL && strstr(why, "version") != NULL);
    }
    h->version = RING_VERSION;
    h->total_size = 1 << 20;
    CHECK(rc_header_init(base, size, 0, 0, 0, 0, 0) != NULL);
    munmap(base, size);
}

static void test_round_trip_across_the_2_64_wrap(void)
{
    rc_ring *r = h_new(4096, UINT64_MAX - 3000);
    unsigned char msg[300], got[400];
    uint64_t len = 0;
    for (int i = 0; i < 2000; i++) {
        uint64_t n = 1 + (uint64_t)(i * 37) % 300;
        memset(msg, i & 0xff, n);
        CHECK(h_send(r, msg, n, INFINITY) == OK);
        CHECK(h_recv(r, got, sizeof got, &len, INFINITY) == OK);
        CHECK(len == n && memcmp(got, msg, n) == 0);
    }
    CHECK(h_recv(r, got, sizeof got, &len, INFINITY) == R_EMPTY);
    CHECK(atomic_load(&r->hdr->msgs_in) - atomic_load(&r->hdr->msgs_out) == 0);
    h_free(r);
}

static void test_corrupt_counters_and_records_are_refused(void)
{
    unsigned char buf[64];
    uint64_t len;
    rc_ring *r = h_new(4096, 0);
    h_send(r, "abc", 3, INFINITY);
    atomic_store(&r->hdr->tail, 4096 * 3 + 8); /* unaligned, beyond capacity */
    CHECK(h_send(r, "x", 1, INFINITY) == R_CORRUPT);
    CHECK(atomic_load(&r->hdr->closed) == CLOSED_BROKEN); /* marked for every peer */
    CHECK(strstr(r->why, "tail") != NULL);
    h_free(r);

    r = h_new(4096, 0);
    h_send(r, "abc", 3, INFINITY);
    ((struct rec *)r->data)->len = 5000; /* runs past the data area */
    CHECK(h_recv(r, buf, sizeof buf, &len, INFINITY) == R_CORRUPT);
    h_free(r);

    r = h_new(4096, 0);
    CHECK(rc_check_record(r, 0, 16, F_PAD, 0, 4096, 0, 0, 0) != NULL); /* a pad not reaching the end */
    CHECK(rc_check_record(r, 4096 - 32, 16, F_PAD, 0, 64, 0, 0, 0) == NULL);
    CHECK(rc_check_record(r, 0, 8, F_FIRST, 1ull << 50, 4096, 0, 0, 0) != NULL); /* absurd total */
    CHECK(rc_check_record(r, 0, 8, F_FIRST | F_LAST, 9, 4096, 0, 0, 0) != NULL); /* total != len */
    CHECK(rc_check_record(r, 0, 8, 0x80, 8, 4096, 0, 0, 0) != NULL); /* unknown flag */
    CHECK(rc_check_record(r, 0, 8, F_LAST, 100, 4096, 1, 100, 50) != NULL); /* LAST that does not complete */
    h_free(r);
}

static void test_garbage_lock_word_is_corrupt_not_an_errno(void)
{
    rc_ring *r = h_new(4096, 0);
    memset(&r->hdr->prod_lock, 0xff, sizeof r->hdr->prod_lock);
    CHECK(lock_ring(r, 1, INFINITY, 0) == R_CORRUPT);
    CHECK(strstr(r->why, "lock") != NULL);
    h_free(r);
}

static void test_dead_lock_owner_is_repaired_from_the_journal(void)
{
    rc_ring *r = h_new(4096, 0);
    pid_t pid = fork();
    if (pid == 0) { /* take the producer lock, write a journal, die holding it */
        if (lock_ring(r, 1, INFINITY, 0) != OK)
            _exit(2);
        r->hdr->pj_tail = 32;
        r->hdr->pj_msgs = 1;
        atomic_store(&r->hdr->pj_valid, 1);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(lock_ring(r, 1, mono() + 1.0, 0) == OK);
    CHECK(atomic_load(&r->hdr->tail) == 32 && atomic_load(&r->hdr->msgs_in) == 1);
    CHECK(atomic_load(&r->hdr->repairs) == 1);
    unlock_ring(r, 1);
    h_free(r);
}

static void test_waits_honour_their_deadline(void)
{
    rc_ring *r = h_new(4096, 0);
    r->spin = 0.001;
    double t0 = mono();
    int rc;
    do
        rc = wait_word(r, lo32(&r->hdr->tail), (uint32_t)atomic_load(&r->hdr->tail), &r->hdr->cons_waiters, t0 + 0.12);
    while (rc == OK);
    double took = mono() - t0;
    CHECK(rc == R_TIMEOUT);
    CHECK(took >= 0.12 && took < 0.5);
    /* a held lock: the timed lock gives up at its deadline too (another process holds it) */
    pid_t pid = fork();
    if (pid == 0) {
        lock_ring(r, 0, INFINITY, 0);
        pause();
        _exit(0);
    }
    usleep(50000);
    t0 = mono();
    CHECK(lock_ring(r, 0, t0 + 0.1, 0) == R_TIMEOUT);
    CHECK(mono() - t0 < 0.5);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(lock_ring(r, 0, mono() + 1.0, 0) == OK); /* the dead holder's lock is repaired */
    unlock_ring(r, 0);
    h_free(r);
}

static void test_liveness(void)
{
    CHECK(proc_alive((uint32_t)getpid(), 0));
    CHECK(!proc_alive(0, 0));
    CHECK(!proc_alive(0xFFFFFFFFu, 0)); /* never kill(-1, 0) */
    CHECK(!proc_alive(PID_LIMIT + 1, 0));
}

/* THEORY: cached counters. Two producer and two consumer handles on one ring (the real
 * rc_produce / rc_consume loops), taking turns so each one's cached head or tail goes stale
 * behind the others' traffic, across the 2^64 wrap: a stale producer still fills the ring to
 * the last record that fits (it reads the live head when its cache says full), never
 * overwrites an unconsumed record, and a stale consumer neither misses nor re-reads one. */
static int c_send(rc_ring *p, uint32_t seq, uint64_t len)
{
    unsigned char msg[256];
    memset(msg, (int)(seq & 0xff), sizeof msg);
    memcpy(msg, &seq, sizeof seq);
    rc_part part = {msg, len};
    return rc_produce(p, &part, 1, len, 0.0, 0, 1, NULL);
}

static int c_recv(rc_ring *c, uint32_t *seq, uint64_t *len)
{
    rc_msg m;
    int rc = rc_consume(c, 0.0, 1, NULL, 0, &m);
    if (rc != R_WHOLE)
        return rc;
    unsigned char got[256];
    *len = m.len;
    memcpy(got, m.src, m.len < sizeof got ? m.len : sizeof got);
    memcpy(seq, got, sizeof *seq);
    for (uint64_t i = sizeof *seq; i < m.len; i++)
        if (got[i] != (*seq & 0xff))
            return R_ERR; /* torn or overwritten */
    return rc_take_whole(c, m.next);
}

static void test_stale_cached_head_and_tail_lose_nothing(void)
{
    rc_ring *base = h_new(4096, UINT64_MAX - 1500);
    rc_ring *hs[4];
    for (int i = 0; i < 4; i++) {
        hs[i] = calloc(1, sizeof *hs[i]);
        rc_bind(hs[i], base->hdr, base->map_size);
        hs[i]->pid = (uint32_t)getpid();
        hs[i]->token = ((uint64_t)hs[i]->pid << 32) | (uint64_t)(10 + i);
    }
    rc_ring *prod[2] = {hs[0], hs[1]}, *cons[2] = {hs[2], hs[3]};
    uint32_t sent = 0, next = 0;
    const uint64_t len = 100; /* a 128-byte record: 32 fit 4096 bytes */
    for (int round = 0; round < 200; round++) {
        rc_ring *p = prod[round % 2];
        int n = 0, rc;
        while ((rc = c_send(p, sent, len)) == OK) { /* fill: the last one in decides "full" */
            sent++;
            n++;
        }
        CHECK(rc == R_EMPTY);
        uint64_t tail = atomic_load(&base->hdr->tail), head = atomic_load(&base->hdr->head);
        uint64_t off = tail % 4096, pad = off + rec_size(len) > 4096 ? 4096 - off : 0;
        CHECK(tail - head <= 4096 && 4096 - (tail - head) < pad + rec_size(len)); /* really no room */
        /* drain part of it with one consumer, the rest with the other */
        int take = 1 + round % 7;
        for (int k = 0; (uint32_t)next < sent; k++) {
            rc_ring *c = cons[k < take ? (round & 1) : !(round & 1)];
            uint32_t seq = 0;
            uint64_t got = 0;
            rc = c_recv(c, &seq, &got);
            CHECK(rc == OK && seq == next && got == len);
            if (rc != OK)
                break;
            next++;
        }
        uint32_t seq;
        uint64_t got;
        CHECK(c_recv(cons[0], &seq, &got) == R_EMPTY && c_recv(cons[1], &seq, &got) == R_EMPTY);
        CHECK(n > 0);
    }
    CHECK(sent == next && sent > 200 * 20);
    CHECK(atomic_load(&base->hdr->msgs_in) - atomic_load(&base->hdr->msgs_out) == 0);
    for (int i = 0; i < 4; i++) {
        slot_unregister(hs[i]->slot);
        free(hs[i]);
    }
    h_free(base);
}

int main(void)
{
    test_header_init_and_verify();
    test_round_trip_across_the_2_64_wrap();
    test_corrupt_counters_and_records_are_refused();
    test_garbage_lock_word_is_corrupt_not_an_errno();
    test_dead_lock_owner_is_repaired_from_the_journal();
    test_waits_honour_their_deadline();
    test_liveness();
    test_stale_cached_head_and_tail_lose_nothing();
    if (failures) {
        fprintf(stderr, "ring_core: %d check(s) failed\n", failures);
        return 1;
    }
    printf("ring_core: all checks passed\n");
    return 0;
}
