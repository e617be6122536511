/* topic_core.c — see topic_core.h for the theory of operation. */
#define _GNU_SOURCE
#include "topic_core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h> /* SSE2: baseline on x86-64 */
#endif

tc_hooks tc_rt = {NULL, NULL, NULL};

static _Atomic uint64_t self_token;
static _Atomic unsigned fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
    atomic_store(&self_token, 0);
    atomic_fetch_add(&fork_gen, 1);
}

static void install_atfork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

static inline uint64_t rec_size(uint64_t len) { return TC_REC + ((len + 15u) & ~(uint64_t)15u); }
static inline uint32_t *lo32(_Atomic uint64_t *p) { return (uint32_t *)p; }
static inline int closing(tc_topic *t) { return atomic_load_explicit(&t->closing, memory_order_relaxed); }

/* /proc/PID/stat: state and start time (field 22, clock ticks since boot). */
static int read_stat(uint32_t pid, char *state, uint64_t *start)
{
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces and ')' */
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    for (int i = 0; i < 19 && p; i++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    *start = p ? strtoull(p, NULL, 10) : 0;
    return 0;
}

uint64_t tc_self_token(void)
{
    uint64_t tok = atomic_load_explicit(&self_token, memory_order_relaxed);
    if (tok)
        return tok;
    pthread_once(&atfork_once, install_atfork);
    uint32_t pid = (uint32_t)getpid();
    char state;
    uint64_t start = 0;
    if (read_stat(pid, &state, &start) != 0)
        start = 0;
    tok = (uint64_t)pid << 32 | (start & 0xffffffffu);
    atomic_store(&self_token, tok);
    return tok;
}

unsigned tc_fork_gen(void) { return atomic_load_explicit(&fork_gen, memory_order_relaxed); }

/* Is the process named by a token (pid << 32 | start & 0xffffffff) alive? A pid beyond
 * PID_MAX_LIMIT or 0 is garbage: dead, never kill()ed. Unknown (EPERM, unreadable stat): alive. */
int tc_proc_alive_token(uint64_t token)
{
    uint32_t pid = (uint32_t)(token >> 32), lo = (uint32_t)token;
    if (pid == 0 || pid > TC_PID_LIMIT)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    char state;
    uint64_t now;
    if (read_stat(pid, &state, &now) != 0)
        return errno == ENOENT || errno == ESRCH ? 0 : 1;
    if (state == 'Z' || state == 'X')
        return 0;
    return lo == 0 || (uint32_t)now == lo;
}

static void futex_wake_all(void *addr) { syscall(SYS_futex, addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0); }

void tc_wake_all(tc_topic *t)
{
    struct tc_hdr *h = t->hdr;
    atomic_fetch_add(&h->space, 1);
    futex_wake_all(lo32(&h->wpos));
    futex_wake_all(&h->space);
}

int tc_corrupt(tc_topic *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof t->why, fmt, ap);
    va_end(ap);
    atomic_store(&t->hdr->closed, TC_CLOSED_BROKEN);
    tc_wake_all(t);
    return TC_CORRUPT;
}

static int broken(tc_topic *t)
{
    if (atomic_load_explicit(&t->hdr->closed, memory_order_relaxed) == TC_CLOSED_BROKEN) {
        snprintf(t->why, sizeof t->why, "marked broken by a peer (a corrupt header was found)");
        return 1;
    }
    return 0;
}

uint64_t tc_hdr_size(uint32_t max_subs)
{
    uint64_t n = offsetof(struct tc_hdr, slots) + (uint64_t)max_subs * sizeof(struct tc_slot);
    return (n + TC_PAGE - 1) / TC_PAGE * TC_PAGE;
}

const char *tc_header_init(void *base, size_t size, uint64_t capacity, uint32_t max_subs, uint32_t overflow,
                           uint32_t owner_pid, uint64_t owner_start)
{
    if (max_subs == 0 || max_subs > TC_MAX_SUBS)
        return "max_subscribers out of range";
    if (capacity < TC_PAGE || capacity > TC_MAX_CAP || (capacity & (capacity - 1)) ||
        tc_hdr_size(max_subs) + capacity != size)
        return "size does not match capacity";
    struct tc_hdr *h = base;
    memset(base, 0, tc_hdr_size(max_subs));
    h->version = TOPIC_VERSION;
    h->hdr_size = (uint32_t)tc_hdr_size(max_subs);
    h->capacity = capacity;
    h->total_size = size;
    h->owner_uid = (uint32_t)getuid();
    h->owner_pid = owner_pid;
    h->owner_start = owner_start;
    h->max_subs = max_subs;
    h->overflow = overflow;
    atomic_store_explicit(&h->magic, TOPIC_MAGIC, memory_order_release);
    return NULL;
}

/* Attach: verify the identity words (the file's size was checked by the caller). */
const char *tc_bind(tc_topic *t, void *base, size_t size)
{
    struct tc_hdr *h = base;
    if (size < TC_PAGE || atomic_load_explicit(&h->magic, memory_order_acquire) != TOPIC_MAGIC)
        return "no kipc topic header (a ring:// channel or a foreign object?)";
    if (h->version != TOPIC_VERSION)
        return "unsupported topic header version";
    uint32_t subs = h->max_subs;
    uint64_t cap = h->capacity;
    if (subs == 0 || subs > TC_MAX_SUBS || h->hdr_size != tc_hdr_size(subs))
        return "corrupt header: max_subscribers / header size";
    if (cap < TC_PAGE || cap > TC_MAX_CAP || (cap & (cap - 1)) || h->total_size != size || h->hdr_size + cap != size)
        return "corrupt header: capacity / size";
    if (h->overflow > TC_OVERFLOW_DROP)
        return "corrupt header: overflow mode";
    memset(t, 0, sizeof *t);
    t->hdr = h;
    t->data = (unsigned char *)base + h->hdr_size;
    t->map_size = size;
    t->cap = cap;
    t->frag_max = cap / 2 - TC_REC; /* < 2^31: fits a record's 32-bit length, as a pad's does */
    t->max_subs = subs;
    t->overflow = h->overflow;
    t->slot = -1;
    return NULL;
}

/* -- waiting --------------------------------------------------------------------------------------- */
typedef int (*ready_fn)(tc_topic *t);

/* One wait: spin `spin` s while !ready, then one futex sleep of at most SLICE on `word`
 * (expected value: *fixed if given, else the word read after the waiter count went up).
 * TC_OK when ready or a slice ended, TC_TIMEOUT past the deadline, TC_LOCAL when closed here,
 * TC_ERR when the interrupted hook says so (a signal handler raised). */
static int wait_word(tc_topic *t, _Atomic uint32_t *word, const uint32_t *fixed, _Atomic uint32_t *waiters,
                     ready_fn ready, double deadline)
{
    struct tc_hdr *h = t->hdr;
    if (closing(t))
        return TC_LOCAL;
    double now = mono();
    if (now >= deadline)
        return TC_TIMEOUT;
    int rc = TC_OK, slept = 0;
    void *gil = tc_rt.release ? tc_rt.release() : NULL;
    if (t->spin > 0) {
        double end = now + t->spin < deadline ? now + t->spin : deadline;
        for (unsigned i = 1;; i++) {
            if (ready(t) || atomic_load_explicit(&h->closed, memory_order_relaxed) || closing(t))
                goto out;
            cpu_relax();
            if ((i & 63) == 0) {
                if (mono() >= end)
                    break;
                if (i >= 512)
                    sched_yield(); /* a peer on our core needs it more than our spin */
            }
        }
    }
    now = mono();
    if (now >= deadline) {
        rc = TC_TIMEOUT;
        goto out;
    }
    double left = deadline - now < TC_SLICE ? deadline - now : TC_SLICE;
    struct timespec rel = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    atomic_fetch_add(waiters, 1); /* seq_cst: pairs with the waker's fence */
    uint32_t expect = fixed ? *fixed : atomic_load(word);
    if (!ready(t) && !atomic_load(&h->closed) && !closing(t)) {
        syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expect, &rel, NULL, 0);
        slept = 1;
    }
    atomic_fetch_sub(waiters, 1);
out:
    if (tc_rt.reacquire)
        tc_rt.reacquire(gil);
    if (slept && tc_rt.interrupted && tc_rt.interrupted())
        return TC_ERR;
    if (closing(t))
        return TC_LOCAL;
    if (rc == TC_OK && mono() >= deadline && !ready(t))
        rc = TC_TIMEOUT;
    return rc;
}

/* -- the publisher lock --------------------------------------------------------------------------------- */
static void repair(struct tc_hdr *h)
{
    if (atomic_load_explicit(&h->j_valid, memory_order_acquire)) {
        /* a publisher died between its two commit stores: roll its journal forward */
        atomic_store_explicit(&h->wpos, h->j_wpos, memory_order_release);
        atomic_store_explicit(&h->wmsg, h->j_wmsg, memory_order_relaxed);
        atomic_store_explicit(&h->j_valid, 0, memory_order_release);
    }
}

/* nb: give up (TC_FULL) after a short spin instead of waiting for the deadline. */
static int tc_lock(tc_topic *t, double deadline, int nb)
{
    struct tc_hdr *h = t->hdr;
    uint64_t me = tc_self_token(), zero = 0;
    if (atomic_compare_exchange_strong(&h->lock, &zero, me)) {
        repair(h);
        return TC_OK;
    }
    double start = mono(), probe = start + TC_PROBE, check = start + TC_SLICE;
    void *gil = NULL;
    int released = 0, rc = TC_OK;
    for (unsigned i = 1;; i++) {
        uint64_t cur = atomic_load_explicit(&h->lock, memory_order_relaxed);
        if (cur == 0) {
            zero = 0;
            if (atomic_compare_exchange_weak(&h->lock, &zero, me))
                break;
            continue;
        }
        if (i < 64) {
            cpu_relax();
            continue;
        }
        if (!released && tc_rt.release) {
            gil = tc_rt.release();
            released = 1;
        }
        if (i < 256)
            sched_yield();
        else
            nap(50000);
        double now = mono();
        if (closing(t)) {
            rc = TC_LOCAL;
            break;
        }
        if (broken(t)) {
            rc = TC_CORRUPT;
            break;
        }
        if (now >= probe) {
            probe = now + TC_PROBE;
            if (!tc_proc_alive_token(cur) && atomic_compare_exchange_strong(&h->lock, &cur, me)) {
                atomic_fetch_add(&h->repairs, 1); /* the holder died: its lock is ours now */
                break;
            }
        }
        if (now >= deadline || (nb && now - start > 2e-4)) {
            rc = nb && now < deadline ? TC_FULL : TC_TIMEOUT;
            break;
        }
        if (now >= check && released && tc_rt.reacquire) {
            check = now + TC_SLICE;
            tc_rt.reacquire(gil);
            int stop = tc_rt.interrupted && tc_rt.interrupted();
            gil = tc_rt.release();
            if (stop) {
                rc = TC_ERR;
                break;
            }
        }
    }
    if (released && tc_rt.reacquire)
        tc_rt.reacquire(gil);
    if (rc == TC_OK)
        repair(h);
    return rc;
}

static void tc_unlock(tc_topic *t) { atomic_store_explicit(&t->hdr->lock, 0, memory_order_release); }

/* Under the lock: wpos and oldest are record edges, oldest <= wpos <= oldest + capacity. */
static int check_edges(tc_topic *t, uint64_t *wp, uint64_t *op)
{
    struct tc_hdr *h = t->hdr;
    uint64_t w = atomic_load_explicit(&h->wpos, memory_order_acquire);
    uint64_t o = atomic_load_explicit(&h->oldest, memory_order_acquire);
    if ((w | o) & 15u || w - o > t->cap)
        return tc_corrupt(t, "wpos %llu / oldest %llu are not record edges within capacity %llu",
                          (unsigned long long)w, (unsigned long long)o, (unsigned long long)t->cap);
    *wp = w;
    *op = o;
    return TC_OK;
}

/* The record at byte counter `p` (p below w): validated header, its size in *size. */
static int read_rec(tc_topic *t, uint64_t p, uint64_t w, struct tc_rec *r, uint64_t *size)
{
    uint64_t off = p & (t->cap - 1);
    memcpy(r, t->data + off, sizeof *r);
    if (r->flags & ~TC_F_PAD)
        return tc_corrupt(t, "record at %llu has unknown flags %#x", (unsigned long long)p, r->flags);
    if (r->flags & TC_F_PAD) {
        if (off + TC_REC + (uint64_t)r->len != t->cap)
            return tc_corrupt(t, "pad record at %llu of %u bytes does not end the data area", (unsigned long long)p,
                              r->len);
        *size = t->cap - off;
    } else {
        if (r->len > t->frag_max || off + rec_size(r->len) > t->cap)
            return tc_corrupt(t, "record at %llu of %u bytes does not fit the data area (limit %llu)",
                              (unsigned long long)p, r->len, (unsigned long long)t->frag_max);
        *size = rec_size(r->len);
    }
    if (*size > w - p)
        return tc_corrupt(t, "record at %llu of %llu bytes runs past the commit point %llu", (unsigned long long)p,
                          (unsigned long long)*size, (unsigned long long)w);
    return TC_OK;
}

/* -- publishing ------------------------------------------------------------------------------------------- */
/* Is there room for t->want record bytes now (a hint without the lock)? */
static int room_hint(tc_topic *t)
{
    struct tc_hdr *h = t->hdr;
    if (t->overflow == TC_OVERFLOW_DROP || t->want == 0)
        return 1;
    uint64_t w = atomic_load_explicit(&h->wpos, memory_order_acquire);
    uint64_t off = w & (t->cap - 1);
    uint64_t pad = off + t->want > t->cap ? t->cap - off : 0;
    uint64_t floor = w + pad + t->want - t->cap;
    for (uint32_t i = 0; i < t->max_subs; i++) {
        struct tc_slot *s = &h->slots[i];
        if (atomic_load_explicit(&s->token, memory_order_relaxed) &&
            (int64_t)(floor - atomic_load_explicit(&s->pos, memory_order_acquire)) > 0)
            return 0;
    }
    return 1;
}

/* Free the slots of dead subscribers that hold the publisher back (CAS: a concurrent join or
 * leave wins). */
static void reclaim_dead(tc_topic *t, uint64_t floor, int all)
{
    struct tc_hdr *h = t->hdr;
    for (uint32_t i = 0; i < t->max_subs; i++) {
        struct tc_slot *s = &h->slots[i];
        uint64_t tok = atomic_load(&s->token);
        if (!tok || (!all && (int64_t)(floor - atomic_load(&s->pos)) <= 0))
            continue;
        if (!tc_proc_alive_token(tok) && atomic_compare_exchange_strong(&s->token, &tok, 0))
            atomic_fetch_add(&h->repairs, 1);
    }
}

#if defined(__x86_64__)
/* A copy of a large message (a camera frame) with non-temporal stores: the destination lines
 * are not read into the cache first (a plain store's read-for-ownership doubles the memory
 * traffic) and the copy does not evict what the cache holds. glibc's memcpy switches to them
 * only above ~3/4 of the L3 (24 MiB on the development VM); for a 6 MiB frame they halve the
 * copy (0.4 vs 0.8-1.0 ms measured), and writing then reading every line is still faster. The
 * caller fences (sfence) before it commits: these stores are not ordered by a release store. */
#define TC_NT_MIN (1u << 20)
static void copy_nt(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t head = (16u - ((uintptr_t)dst & 15u)) & 15u;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i)), b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32)), d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
    memcpy(dst + i, src + i, n - i);
}
#endif

static void copy_parts(unsigned char *dst, const tc_part *parts, int nparts, uint64_t len)
{
    void *gil = len >= (256u << 10) && tc_rt.release ? tc_rt.release() : NULL;
#if defined(__x86_64__)
    if (len >= TC_NT_MIN) {
        for (int i = 0; i < nparts; i++) {
            copy_nt(dst, parts[i].buf, parts[i].len);
            dst += parts[i].len;
        }
        _mm_sfence(); /* the payload is visible before commit_locked's release store of wpos */
        if (gil)
            tc_rt.reacquire(gil);
        return;
    }
#endif
    for (int i = 0; i < nparts; i++) {
        memcpy(dst, parts[i].buf, parts[i].len);
        dst += parts[i].len;
    }
    if (gil)
        tc_rt.reacquire(gil);
}

/* Under the lock, the record complete: commit it through the journal, unlock, wake subscribers. */
static void commit_locked(tc_topic *t, uint64_t end, uint64_t msg)
{
    struct tc_hdr *h = t->hdr;
    h->j_wpos = end;
    h->j_wmsg = msg + 1;
    atomic_store_explicit(&h->j_valid, 1, memory_order_release);
    atomic_store_explicit(&h->wpos, end, memory_order_release);
    atomic_store_explicit(&h->wmsg, msg + 1, memory_order_relaxed);
    atomic_store_explicit(&h->j_valid, 0, memory_order_release);
    tc_unlock(t);
    t->want = 0;
    t->blocked_since = 0;
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->data_waiters, memory_order_relaxed))
        futex_wake_all(lo32(&h->wpos));
}

/* nparts < 0: a loan — return with the lock held and the record's payload at t->loan_dst
 * (tc_loan_end publishes or abandons it). */
int tc_publish(tc_topic *t, const tc_part *parts, int nparts, uint64_t len, double deadline, int nb)
{
    struct tc_hdr *h = t->hdr;
    uint64_t need = rec_size(len);
    for (;;) {
        if (closing(t))
            return TC_LOCAL;
        if (broken(t))
            return TC_CORRUPT;
        if (atomic_load_explicit(&h->closed, memory_order_relaxed))
            return TC_CLOSED;
        int rc = tc_lock(t, deadline, nb);
        if (rc != TC_OK)
            return rc;
        uint64_t w, o;
        if ((rc = check_edges(t, &w, &o)) != TC_OK) {
            tc_unlock(t);
            return rc;
        }
        uint64_t off = w & (t->cap - 1);
        uint64_t pad = off + need > t->cap ? t->cap - off : 0;
        uint64_t end = w + pad + need, floor = end - t->cap;
        int blocked = 0;
        if (t->overflow == TC_OVERFLOW_BLOCK) {
            uint32_t joins = atomic_load_explicit(&h->joins, memory_order_relaxed);
            if (!t->min_valid || joins != t->min_joins || (int64_t)(floor - t->min_pos) > 0) {
                uint64_t min = end; /* no subscriber: nothing holds the write back */
                for (uint32_t i = 0; i < t->max_subs; i++) {
                    struct tc_slot *s = &h->slots[i];
                    if (!atomic_load_explicit(&s->token, memory_order_acquire))
                        continue;
                    uint64_t p = atomic_load_explicit(&s->pos, memory_order_acquire);
                    if (p & 15u || w - p > t->cap) {
                        tc_unlock(t);
                        return tc_corrupt(t, "subscriber slot %u: cursor %llu is not within capacity of wpos %llu",
                                          i, (unsigned long long)p, (unsigned long long)w);
                    }
                    if ((int64_t)(p - min) < 0)
                        min = p;
                    if ((int64_t)(floor - p) > 0)
                        blocked = 1;
                }
                t->min_pos = min;
                t->min_joins = joins;
                t->min_valid = 1;
            }
        }
        if (blocked) {
            tc_unlock(t);
            t->want = need;
            double now = mono();
            if (t->blocked_since == 0)
                t->blocked_since = now;
            else if (now - t->blocked_since >= TC_PROBE) {
                reclaim_dead(t, floor, 0);
                t->blocked_since = now;
                continue;
            }
            if (nb)
                return TC_FULL;
            rc = tc_wait(t, 1, deadline);
            if (rc != TC_OK)
                return rc;
            continue;
        }
        /* move `oldest` past everything this write overwrites, before writing a byte */
        if ((int64_t)(floor - o) > 0) {
            while ((int64_t)(floor - o) > 0) {
                struct tc_rec r;
                uint64_t size;
                if ((rc = read_rec(t, o, w, &r, &size)) != TC_OK) {
                    tc_unlock(t);
                    return rc;
                }
                o += size;
            }
            atomic_store(&h->oldest, o);
            atomic_thread_fence(memory_order_seq_cst);
        }
        uint64_t msg = atomic_load_explicit(&h->wmsg, memory_order_relaxed);
        unsigned char *dst = t->data + off;
        if (pad) {
            struct tc_rec pr = {msg, (uint32_t)(pad - TC_REC), TC_F_PAD};
            memcpy(dst, &pr, sizeof pr);
            dst = t->data;
        }
        struct tc_rec r = {msg, (uint32_t)len, 0};
        memcpy(dst, &r, sizeof r);
        if (nparts < 0) { /* a loan: the caller fills the payload, tc_loan_end commits */
            t->loan_dst = dst + TC_REC;
            t->loan_end = end;
            t->loan_msg = msg;
            return TC_OK;
        }
        copy_parts(dst + TC_REC, parts, nparts, len);
        commit_locked(t, end, msg);
        return TC_OK;
    }
}

void tc_loan_end(tc_topic *t, int commit)
{
    if (!t->loan_dst)
        return;
    t->loan_dst = NULL;
    if (commit)
        commit_locked(t, t->loan_end, t->loan_msg);
    else
        tc_unlock(t); /* nothing was committed: the next publisher writes over it */
}

/* -- subscribing ------------------------------------------------------------------------------------------ */
static void publish_cursor(tc_topic *t)
{
    struct tc_slot *s = &t->hdr->slots[t->slot];
    atomic_store_explicit(&s->msgno, t->msgno, memory_order_relaxed);
    atomic_store_explicit(&s->dropped, t->dropped, memory_order_relaxed);
    atomic_store_explicit(&s->pos, t->pos, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    struct tc_hdr *h = t->hdr;
    if (atomic_load_explicit(&h->space_waiters, memory_order_relaxed)) {
        atomic_fetch_add(&h->space, 1);
        futex_wake_all(&h->space);
    }
}

static int take_slot(tc_topic *t)
{
    struct tc_hdr *h = t->hdr;
    uint64_t me = tc_self_token();
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            reclaim_dead(t, 0, 1);
        for (uint32_t i = 0; i < t->max_subs; i++) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&h->slots[i].token, &zero, me))
                return (int)i;
        }
    }
    return -1;
}

/* Join (under the lock) at the commit point, the history-th last message, or (at >= 0: a forked
 * child's rejoin) at the handle's own cursor. */
static int join_locked(tc_topic *t, uint64_t history, int rejoin)
{
    struct tc_hdr *h = t->hdr;
    uint64_t w, o;
    int rc = check_edges(t, &w, &o);
    if (rc != TC_OK)
        return rc;
    int slot = take_slot(t);
    if (slot < 0)
        return TC_NOSLOT;
    if (!rejoin) {
        t->pos = w;
        t->msgno = atomic_load_explicit(&h->wmsg, memory_order_relaxed);
        t->dropped = 0;
        if (history) {
            uint64_t n = 0, p = o, size;
            struct tc_rec r;
            while (p != w) { /* bounded: each record is >= 16 bytes of at most capacity */
                if ((rc = read_rec(t, p, w, &r, &size)) != TC_OK)
                    goto fail;
                n += !(r.flags & TC_F_PAD);
                p += size;
            }
            uint64_t skip = n > history ? n - history : 0;
            for (p = o; p != w; p += size) {
                if ((rc = read_rec(t, p, w, &r, &size)) != TC_OK)
                    goto fail;
                if (r.flags & TC_F_PAD)
                    continue;
                if (skip-- == 0) {
                    t->pos = p;
                    t->msgno = r.seq;
                    break;
                }
            }
        }
    }
    t->slot = slot;
    t->gen = tc_fork_gen();
    publish_cursor(t);
    atomic_fetch_add(&h->joins, 1); /* publishers' cached minimum cursor may be above ours */
    return TC_OK;
fail:
    atomic_store(&h->slots[slot].token, 0);
    return rc;
}

int tc_join(tc_topic *t, uint64_t history, double deadline)
{
    int rc = tc_lock(t, deadline, 0);
    if (rc != TC_OK)
        return rc;
    rc = join_locked(t, history, 0);
    tc_unlock(t);
    if (rc == TC_OK)
        t->subscriber = 1;
    return rc;
}

void tc_leave(tc_topic *t)
{
    if (t->slot < 0)
        return;
    if (t->gen == tc_fork_gen()) { /* a forked child's copy of the slot is its parent's */
        struct tc_hdr *h = t->hdr;
        uint64_t me = tc_self_token();
        atomic_compare_exchange_strong(&h->slots[t->slot].token, &me, 0);
        atomic_fetch_add(&h->space, 1);
        futex_wake_all(&h->space);
    }
    t->slot = -1;
}

/* Behind `oldest`: jump to the oldest record still there (under the lock, where wpos, wmsg and
 * oldest agree) and count every message number skipped. */
static int resync(tc_topic *t, double deadline)
{
    struct tc_hdr *h = t->hdr;
    int rc = tc_lock(t, deadline, 0);
    if (rc != TC_OK)
        return rc;
    uint64_t w, o, seq, size;
    if ((rc = check_edges(t, &w, &o)) != TC_OK)
        goto out;
    if ((int64_t)(o - t->pos) <= 0)
        goto out; /* not behind (any more) */
    if (o == w)
        seq = atomic_load_explicit(&h->wmsg, memory_order_relaxed);
    else {
        struct tc_rec r;
        if ((rc = read_rec(t, o, w, &r, &size)) != TC_OK)
            goto out;
        seq = r.seq;
    }
    if ((int64_t)(seq - t->msgno) < 0) {
        rc = tc_corrupt(t, "oldest record's number %llu is below this subscriber's %llu", (unsigned long long)seq,
                        (unsigned long long)t->msgno);
        goto out;
    }
    t->dropped += seq - t->msgno;
    t->msgno = seq;
    t->pos = o;
    publish_cursor(t);
out:
    tc_unlock(t);
    return rc;
}

static int check_sub(tc_topic *t, double deadline)
{
    struct tc_hdr *h = t->hdr;
    if (closing(t))
        return TC_LOCAL;
    if (broken(t))
        return TC_CORRUPT;
    if (!t->subscriber)
        return TC_EVICTED;
    if (t->gen != tc_fork_gen() || t->slot < 0) { /* forked child: its own slot at this handle's cursor */
        t->slot = -1;
        int rc = tc_lock(t, deadline, 0);
        if (rc != TC_OK)
            return rc;
        rc = join_locked(t, 0, 1);
        tc_unlock(t);
        if (rc != TC_OK)
            return rc;
    }
    if (atomic_load_explicit(&h->slots[t->slot].token, memory_order_relaxed) != tc_self_token()) {
        snprintf(t->why, sizeof t->why, "this subscriber's slot %d was taken over by another process", t->slot);
        return TC_EVICTED;
    }
    return TC_OK;
}

int tc_peek(tc_topic *t, const unsigned char **ptr, uint32_t *len, double deadline)
{
    struct tc_hdr *h = t->hdr;
    int rc = check_sub(t, deadline);
    if (rc != TC_OK)
        return rc;
    for (unsigned tries = 1;; tries++) {
        if ((tries & 63) == 0 && mono() >= deadline)
            return TC_TIMEOUT; /* a publisher laps us faster than we can resync */
        uint64_t w = atomic_load_explicit(&h->wpos, memory_order_acquire);
        if (w == t->pos)
            return atomic_load_explicit(&h->closed, memory_order_acquire) ? TC_CLOSED : TC_EMPTY;
        if ((int64_t)(w - t->pos) < 0)
            return tc_corrupt(t, "wpos %llu is behind this subscriber's cursor %llu", (unsigned long long)w,
                              (unsigned long long)t->pos);
        uint64_t o = atomic_load_explicit(&h->oldest, memory_order_acquire);
        if ((int64_t)(o - t->pos) > 0) {
            if ((rc = resync(t, deadline)) != TC_OK)
                return rc;
            continue;
        }
        if (w - t->pos > t->cap)
            return tc_corrupt(t, "wpos %llu is more than capacity ahead of cursor %llu", (unsigned long long)w,
                              (unsigned long long)t->pos);
        uint64_t off = t->pos & (t->cap - 1);
        struct tc_rec r;
        memcpy(&r, t->data + off, sizeof r);
        atomic_thread_fence(memory_order_acquire);
        if ((int64_t)(atomic_load_explicit(&h->oldest, memory_order_relaxed) - t->pos) > 0)
            continue; /* overwritten while we looked: resync above */
        if (r.flags & ~TC_F_PAD || r.seq != t->msgno)
            return tc_corrupt(t, "record at %llu: flags %#x, number %llu where %llu was due", (unsigned long long)t->pos,
                              r.flags, (unsigned long long)r.seq, (unsigned long long)t->msgno);
        if (r.flags & TC_F_PAD) {
            if (off + TC_REC + (uint64_t)r.len != t->cap)
                return tc_corrupt(t, "pad record at %llu does not end the data area", (unsigned long long)t->pos);
            t->pos += t->cap - off;
            continue;
        }
        if (r.len > t->frag_max || off + rec_size(r.len) > t->cap || rec_size(r.len) > w - t->pos)
            return tc_corrupt(t, "record at %llu of %u bytes does not fit (limit %llu)", (unsigned long long)t->pos,
                              r.len, (unsigned long long)t->frag_max);
        *ptr = t->data + off + TC_REC;
        *len = r.len;
        return TC_OK;
    }
}

int tc_consume(tc_topic *t, uint32_t len, double deadline)
{
    struct tc_hdr *h = t->hdr;
    atomic_thread_fence(memory_order_acquire); /* the copy is done before we look at oldest again */
    if ((int64_t)(atomic_load_explicit(&h->oldest, memory_order_relaxed) - t->pos) > 0)
        return TC_EMPTY; /* overwritten while copied (drop_oldest): torn, peek again */
    t->pos += rec_size(len);
    t->msgno++;
    publish_cursor(t);
    return TC_OK;
}

/* -- readiness --------------------------------------------------------------------------------------------- */
static int data_ready(tc_topic *t)
{
    return atomic_load_explicit(&t->hdr->wpos, memory_order_acquire) != t->pos;
}

static int space_ready(tc_topic *t) { return room_hint(t); }

int tc_ready(tc_topic *t, int send)
{
    struct tc_hdr *h = t->hdr;
    if (closing(t) || atomic_load_explicit(&h->closed, memory_order_relaxed))
        return 1; /* the attempt reports it */
    if (send)
        return room_hint(t) && atomic_load_explicit(&h->lock, memory_order_relaxed) == 0;
    if (!t->subscriber || t->slot < 0 || t->gen != tc_fork_gen())
        return 1;
    return data_ready(t);
}

int tc_wait(tc_topic *t, int send, double deadline)
{
    struct tc_hdr *h = t->hdr;
    if (closing(t))
        return TC_LOCAL;
    if (atomic_load_explicit(&h->closed, memory_order_relaxed))
        return TC_OK;
    if (!send) {
        if (!t->subscriber || t->slot < 0 || t->gen != tc_fork_gen())
            return TC_OK;
        uint32_t expect = (uint32_t)t->pos;
        return wait_word(t, (_Atomic uint32_t *)lo32(&h->wpos), &expect, &h->data_waiters, data_ready, deadline);
    }
    uint64_t holder = atomic_load_explicit(&h->lock, memory_order_relaxed);
    if (holder) {
        double now = mono();
        if (now >= t->lock_probe_at) { /* a dead holder: take the lock over (repairs) and drop it */
            t->lock_probe_at = now + TC_PROBE;
            if (!tc_proc_alive_token(holder)) {
                int rc = tc_lock(t, deadline, 0);
                if (rc != TC_OK)
                    return rc;
                tc_unlock(t);
                return TC_OK;
            }
        }
        if (room_hint(t)) { /* room, only the lock is busy (a short copy): nap, then try again */
            void *gil = tc_rt.release ? tc_rt.release() : NULL;
            nap(50000);
            if (gil)
                tc_rt.reacquire(gil);
            return mono() >= deadline ? TC_TIMEOUT : TC_OK;
        }
    }
    if (t->want && t->blocked_since && mono() - t->blocked_since >= TC_PROBE) {
        uint64_t w = atomic_load(&h->wpos), off = w & (t->cap - 1);
        uint64_t pad = off + t->want > t->cap ? t->cap - off : 0;
        reclaim_dead(t, w + pad + t->want - t->cap, 0);
        t->blocked_since = mono();
    }
    return wait_word(t, &h->space, NULL, &h->space_waiters, space_ready, deadline);
}

void tc_interrupt(tc_topic *t)
{
    atomic_store(&t->closing, 1);
    tc_wake_all(t);
}

void tc_mark_closed(tc_topic *t)
{
    uint32_t zero = 0;
    atomic_compare_exchange_strong(&t->hdr->closed, &zero, 1);
    tc_wake_all(t);
}
