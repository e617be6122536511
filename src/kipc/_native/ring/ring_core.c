/* ring_core.c — the ring's algorithm in C11 + POSIX, no Python (theory: ring_core.h). */
#define _GNU_SOURCE
#include "ring_core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

rc_hooks rc_rt;

/* ------------------------------------------------------------------------- */
/* truncation by a peer: the SIGBUS table (see THEORY: crash cases) */

static _Atomic uintptr_t slot_base[RING_SLOTS]; /* 0 = free */
static size_t slot_size[RING_SLOTS];
_Atomic uintptr_t slot_broken[RING_SLOTS]; /* lowest replaced address, 0 = intact */
static struct sigaction prev_bus;
static void on_sigbus(int sig, siginfo_t *si, void *uctx);

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    if (si->si_code > 0) { /* a real fault (BUS_ADRERR...), not kill()/raise() */
        for (int i = 0; i < RING_SLOTS; i++) {
            uintptr_t b = atomic_load_explicit(&slot_base[i], memory_order_acquire);
            if (b && a >= b && a < b + slot_size[i]) {
                uintptr_t page = a & ~(uintptr_t)(HDR_SIZE - 1);
                if (mmap((void *)page, b + slot_size[i] - page, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
                    break;
                uintptr_t cur = atomic_load(&slot_broken[i]);
                while ((cur == 0 || page < cur) && !atomic_compare_exchange_weak(&slot_broken[i], &cur, page))
                    ;
                return; /* the faulting access is retried on the zero page */
            }
        }
    }
    /* Not ours: behave as if we were never installed. A handler that chains back to us
     * (installed after us, then we re-installed over it) must not loop: second time, default. */
    static volatile sig_atomic_t chaining;
    if (!chaining && prev_bus.sa_flags & SA_SIGINFO) {
        chaining = 1;
        prev_bus.sa_sigaction(sig, si, uctx);
        chaining = 0;
    } else if (!chaining && prev_bus.sa_handler != SIG_DFL && prev_bus.sa_handler != SIG_IGN) {
        chaining = 1;
        prev_bus.sa_handler(sig);
        chaining = 0;
    } else {
        signal(SIGBUS, SIG_DFL);
        if (si->si_code <= 0)
            raise(SIGBUS); /* SA_NODEFER: delivered now, default action */
        /* a fault: returning re-executes the access and the default action applies */
    }
}

/* (Re)install the handler if someone replaced it (e.g. faulthandler.enable() after import). */
static void install_sigbus(void)
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) != 0 || ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus))
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    prev_bus = cur;
    sigaction(SIGBUS, &sa, NULL);
}

int slot_register(void *base, size_t size)
{
    install_sigbus();
    for (int i = 0; i < RING_SLOTS; i++) {
        if (atomic_load(&slot_base[i]) == 0) {
            slot_size[i] = size;
            atomic_store(&slot_broken[i], 0);
            atomic_store_explicit(&slot_base[i], (uintptr_t)base, memory_order_release);
            return i;
        }
    }
    return -1; /* table full: this ring is unprotected (documented) */
}






void futex_wake_all(void *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
/* ------------------------------------------------------------------------- */
/* processes: start time and liveness (claims of a dead consumer are repaired) */

/* State letter and start time (clock ticks since boot) of /proc/PID/stat; -1 if it is gone. */
int read_stat(uint32_t pid, char *state, uint64_t *start)
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
    for (int i = 0; i < 19 && p; i++) { /* field 3 (state) -> field 22 (starttime) */
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    *start = p ? strtoull(p, NULL, 10) : 0;
    return 0;
}

/* Is process `pid` that started at `start` (0 = unknown) still running (zombies do not count)? */
int proc_alive(uint32_t pid, uint64_t start)
{
    if (pid == 0 || pid > PID_LIMIT) /* garbage: kill((pid_t)-1, 0) would probe every process */
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    char state;
    uint64_t now;
    if (read_stat(pid, &state, &now) != 0)
        return errno == ENOENT || errno == ESRCH ? 0 : 1;
    if (state == 'Z' || state == 'X')
        return 0;
    return start == 0 || now == 0 || now == start;
}


/* A value read from shared memory failed its range check (THEORY: trust nothing in shared
 * memory): note what, mark the ring broken for every peer (closed = 2) and wake them all.
 * Returns R_CORRUPT; the call raises BadObject with r->why. */
int corrupt(rc_ring *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    struct ring_hdr *h = r->hdr;
    atomic_store(&h->closed, CLOSED_BROKEN);
    futex_wake_all(lo32(&h->tail));
    futex_wake_all(lo32(&h->head));
    futex_wake_all(lo32(&h->claim));
    futex_wake_all(lo32(&h->pclaim));
    futex_wake_all(&h->unfinished);
    return R_CORRUPT;
}


/* Wait (GIL released) until the 32-bit word differs from `expect`, the ring is
 * closed (by its creator or in this process), or `deadline` passes. Returns OK
 * (re-check), R_TIMEOUT, R_LOCAL (closed by this process), R_BROKEN, or R_ERR with
 * a Python exception (a signal handler raised). Also returns OK after one sleep
 * slice so callers can run periodic checks. Holds no lock. */
int wait_word(rc_ring *r, uint32_t *word, uint32_t expect, _Atomic uint32_t *waiters, double deadline)
{
    _Atomic uint32_t *w = (_Atomic uint32_t *)word;
    struct ring_hdr *h = r->hdr;
    if (is_broken(r))
        return R_BROKEN;
    if (closing(r))
        return R_LOCAL;
    double now = mono();
    if (now >= deadline)
        return R_TIMEOUT;
    int rc = OK, err = 0;
    void *ts = rc_rt.release ? rc_rt.release() : NULL;
    if (r->spin > 0) {
        double end = now + r->spin;
        if (end > deadline)
            end = deadline;
        for (unsigned i = 1;; i++) {
            if (atomic_load_explicit(w, memory_order_acquire) != expect ||
                atomic_load_explicit(&h->closed, memory_order_relaxed) || closing(r))
                goto out;
            cpu_relax();
            if ((i & 63) == 0) {
                if (mono() >= end)
                    break;
                /* After a short pure spin, yield now and then: when the peer shares
                 * our core (a busy machine), spinning would only delay it. */
                if (i >= 512)
                    sched_yield();
            }
        }
    }
    now = mono();
    if (now >= deadline) {
        rc = R_TIMEOUT;
        goto out;
    }
    double left = deadline - now;
    if (left > SLICE)
        left = SLICE;
    struct timespec rel = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    atomic_fetch_add(waiters, 1); /* seq_cst: pairs with the waker's fence */
    if (atomic_load(w) == expect && !atomic_load(&h->closed) && !atomic_load(&r->closing)) {
        if (syscall(SYS_futex, word, FUTEX_WAIT, expect, &rel, NULL, 0) == -1)
            err = errno;
    }
    atomic_fetch_sub(waiters, 1);
out:
    if (rc_rt.reacquire)
        rc_rt.reacquire(ts);
    if (rc == OK && (err == EINTR || err == ETIMEDOUT) && rc_rt.interrupted && rc_rt.interrupted())
        return R_ERR;
    if (rc == OK && is_broken(r))
        return R_BROKEN;
    if (rc == OK && closing(r))
        return R_LOCAL;
    return rc;
}

/* ------------------------------------------------------------------------- */
/* locks and repair */

void repair_prod(struct ring_hdr *h)
{
    if (atomic_load_explicit(&h->pj_valid, memory_order_acquire)) {
        atomic_store_explicit(&h->msgs_in, h->pj_msgs, memory_order_relaxed);
        atomic_store_explicit(&h->tail, h->pj_tail, memory_order_release);
        atomic_store_explicit(&h->pj_valid, 0, memory_order_release);
    }
    atomic_store_explicit(&h->frag_active, 0, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake_all(lo32(&h->tail));
}

void repair_cons(struct ring_hdr *h)
{
    if (atomic_load_explicit(&h->cj_valid, memory_order_acquire)) {
        atomic_store_explicit(&h->msgs_out, h->cj_msgs, memory_order_relaxed);
        atomic_store_explicit(&h->head, h->cj_head, memory_order_release);
        atomic_store_explicit(&h->cj_valid, 0, memory_order_release);
    }
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake_all(lo32(&h->head));
}

/* Lock words are shared memory too. Before glibc sees a ring mutex, its kind must be the one
 * pthread_mutex_init gave it (robust, process-shared, error-checking: computed once at import,
 * mutex_kind); another kind (a PI or recursive mutex, garbage) would make glibc misbehave. Which
 * ring locks this thread holds is kept here, so EDEADLK ("you hold it") from a lock word that
 * names our thread id but that we never took is recognised as corruption. */
int mutex_kind = -1;
#define HELD_MAX 16
static _Thread_local pthread_mutex_t *held[HELD_MAX];
static _Thread_local int nheld;

static void held_add(pthread_mutex_t *m)
{
    if (nheld < HELD_MAX)
        held[nheld++] = m;
}

static int held_has(pthread_mutex_t *m)
{
    for (int i = 0; i < nheld; i++)
        if (held[i] == m)
            return 1;
    return 0;
}

static void held_drop(pthread_mutex_t *m)
{
    for (int i = nheld - 1; i >= 0; i--)
        if (held[i] == m) {
            held[i] = held[--nheld];
            return;
        }
}

int lock_word_bad(pthread_mutex_t *m) { return mutex_kind >= 0 && m->__data.__kind != mutex_kind; }

/* Take a ring lock before `deadline` (nb: one try; EBUSY -> R_EMPTY). The wait is
 * pthread_mutex_clocklock in SLICE steps: signals and a local close get through. */
int lock_ring(rc_ring *r, int prod, double deadline, int nb)
{
    struct ring_hdr *h = r->hdr;
    pthread_mutex_t *m = prod ? &h->prod_lock : &h->cons_lock;
    const char *name = prod ? "producer" : "consumer";
    if (lock_word_bad(m))
        return corrupt(r, "%s lock of kind %d (%d expected)", name, m->__data.__kind, mutex_kind);
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY && nb)
        return R_EMPTY;
    while (rc == EBUSY) {
        if (closing(r))
            return R_LOCAL;
        double now = mono();
        if (now >= deadline)
            return R_TIMEOUT;
        double until = now + SLICE < deadline ? now + SLICE : deadline;
        struct timespec abs = {(time_t)until, (long)((until - (double)(time_t)until) * 1e9)};
        if (lock_word_bad(m)) /* rewritten while we waited */
            return corrupt(r, "%s lock of kind %d (%d expected)", name, m->__data.__kind, mutex_kind);
        void *ts = rc_rt.release ? rc_rt.release() : NULL;
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &abs);
        if (rc_rt.reacquire)
            rc_rt.reacquire(ts);
        if (rc == ETIMEDOUT) {
            if (rc_rt.interrupted && rc_rt.interrupted())
                return R_ERR;
            rc = EBUSY;
        }
    }
    if (rc == EOWNERDEAD) {
        atomic_fetch_add(&h->repairs, 1);
        if (prod)
            repair_prod(h);
        else
            repair_cons(h);
        rc = pthread_mutex_consistent(m);
    }
    if (rc == EDEADLK && held_has(m))
        return R_HELD; /* this thread holds it: an unreleased loan (prod) or received view (cons) */
    if (rc != 0) /* EINVAL, ENOTRECOVERABLE, EAGAIN, a foreign EDEADLK: the lock word is garbage */
        return corrupt(r, "%s lock word refused by pthread_mutex_lock: %s", name, strerror(rc));
    held_add(m);
    if (is_broken(r)) { /* the lock word may have been a zero page: release what we took */
        held_drop(m);
        pthread_mutex_unlock(m);
        return R_BROKEN;
    }
    if (closing(r) && !nb) { /* closed while we waited for the lock */
        held_drop(m);
        pthread_mutex_unlock(m);
        return R_LOCAL;
    }
    return OK;
}

void unlock_ring(rc_ring *r, int prod)
{
    pthread_mutex_t *m = prod ? &r->hdr->prod_lock : &r->hdr->cons_lock;
    held_drop(m);
    pthread_mutex_unlock(m); /* an error (a lock word rewritten under us) leaves it to the peers' deadlines */
}

/* Under prod_lock: tail is ours (stable), head only moves towards it. Both are record edges
 * (multiples of 16) and 0 <= tail - head <= capacity. Sets r->vtail; OK or R_CORRUPT. */
int check_prod(rc_ring *r, uint64_t *tailp, uint64_t *headp)
{
    struct ring_hdr *h = r->hdr;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
    if ((tail | head) & (REC_HDR - 1) || tail - head > r->cap)
        return corrupt(r, "tail %llu and head %llu (record edges 16-aligned, at most %llu apart expected)",
                       (unsigned long long)tail, (unsigned long long)head, (unsigned long long)r->cap);
    r->vtail = tail;
    if (tailp)
        *tailp = tail;
    if (headp)
        *headp = head;
    return OK;
}

/* Under cons_lock: head is ours, tail only moves away from it: the same rule. */
int check_cons(rc_ring *r, uint64_t *headp, uint64_t *tailp)
{
    struct ring_hdr *h = r->hdr;
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
    if ((tail | head) & (REC_HDR - 1) || tail - head > r->cap)
        return corrupt(r, "head %llu and tail %llu (record edges 16-aligned, at most %llu apart expected)",
                       (unsigned long long)head, (unsigned long long)tail, (unsigned long long)r->cap);
    *headp = head;
    *tailp = tail;
    return OK;
}



void frag_abort(struct ring_hdr *h)
{
    atomic_store_explicit(&h->frag_active, 0, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake_all(lo32(&h->tail));
}

/* Is the producer claim held by a live process that made an attempt within PCLAIM_STALE_NS? */
int pclaim_live(struct ring_hdr *h)
{
    uint64_t beat = atomic_load(&h->pclaim_beat), now = mono_ns();
    if (now > beat && now - beat > PCLAIM_STALE_NS)
        return 0;
    return proc_alive(atomic_load(&h->pclaim_pid), atomic_load(&h->pclaim_start));
}

/* Under prod_lock: end the producer claim `token`. abort: its message is abandoned
 * (consumers drop what they reassembled); else it was completed. */
void pclaim_end(struct ring_hdr *h, uint64_t token, int abort)
{
    if (atomic_load(&h->pclaim) != token)
        return;
    if (abort)
        frag_abort(h);
    uint64_t t = token;
    if (atomic_compare_exchange_strong(&h->pclaim, &t, 0) && atomic_load(&h->pclaim_waiters))
        futex_wake_all(lo32(&h->pclaim));
}

/* Waiting for data: someone mid-message probes the producer lock; a dead owner is repaired,
 * and a dead or stale producer claim is ended (its message abandoned). */
void probe_producer(struct ring_hdr *h)
{
    if (lock_word_bad(&h->prod_lock))
        return; /* the next lock_ring reports it */
    int rc = pthread_mutex_trylock(&h->prod_lock);
    if (rc == EOWNERDEAD) {
        atomic_fetch_add(&h->repairs, 1);
        repair_prod(h);
        pthread_mutex_consistent(&h->prod_lock);
        rc = 0;
    }
    if (rc == 0) {
        uint64_t pc = atomic_load(&h->pclaim);
        if (pc && !pclaim_live(h)) {
            atomic_fetch_add(&h->repairs, 1);
            pclaim_end(h, pc, 1);
        }
        pthread_mutex_unlock(&h->prod_lock);
    }
}

void publish(struct ring_hdr *h, uint64_t new_tail, uint64_t new_msgs)
{
    h->pj_tail = new_tail;
    h->pj_msgs = new_msgs;
    atomic_store_explicit(&h->pj_valid, 1, memory_order_release);
    atomic_store_explicit(&h->msgs_in, new_msgs, memory_order_relaxed);
    atomic_store_explicit(&h->tail, new_tail, memory_order_release);
    atomic_store_explicit(&h->pj_valid, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->cons_waiters, memory_order_relaxed))
        futex_wake_all(lo32(&h->tail));
}


/* Write the pad (if any) and a record header at the validated tail (r->vtail, check_prod:
 * never a re-read of the shared word, which a hostile peer may have changed since); returns
 * the payload pointer. */
unsigned char *place(rc_ring *r, uint64_t pad, uint64_t len, uint32_t flags, uint64_t total)
{
    uint64_t off = r->vtail % r->cap;
    if (pad) {
        struct rec *p = (struct rec *)(r->data + off);
        p->len = (uint32_t)(pad - REC_HDR);
        p->flags = F_PAD;
        p->total = 0;
        off = 0;
    }
    struct rec *rc = (struct rec *)(r->data + off);
    rc->len = (uint32_t)len;
    rc->flags = flags;
    rc->total = total;
    return r->data + off + REC_HDR;
}

void advance(struct ring_hdr *h, uint64_t new_head, int count)
{
    if (count) {
        uint64_t msgs = atomic_load_explicit(&h->msgs_out, memory_order_relaxed) + 1;
        h->cj_head = new_head;
        h->cj_msgs = msgs;
        atomic_store_explicit(&h->cj_valid, 1, memory_order_release);
        atomic_store_explicit(&h->msgs_out, msgs, memory_order_relaxed);
        atomic_store_explicit(&h->head, new_head, memory_order_release);
        atomic_store_explicit(&h->cj_valid, 0, memory_order_relaxed);
    } else {
        atomic_store_explicit(&h->head, new_head, memory_order_release);
    }
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->prod_waiters, memory_order_relaxed))
        futex_wake_all(lo32(&h->head));
}

/* Claims (THEORY: waiting and claims). Set under cons_lock; cleared by the owner, or by a
 * cons_lock holder that found its owner dead. */
void claim_set(rc_ring *r)
{
    struct ring_hdr *h = r->hdr;
    if (!r->start) {
        char state;
        if (read_stat(r->pid, &state, &r->start) != 0)
            r->start = 0;
    }
    atomic_store_explicit(&h->claim_pid, r->pid, memory_order_relaxed);
    atomic_store_explicit(&h->claim_start, r->start, memory_order_relaxed);
    atomic_store_explicit(&h->claim, r->token, memory_order_release);
}

void claim_clear(struct ring_hdr *h, uint64_t token)
{
    uint64_t t = token;
    if (atomic_compare_exchange_strong(&h->claim, &t, 0) && atomic_load(&h->claim_waiters))
        futex_wake_all(lo32(&h->claim)); /* the CAS is seq_cst: the Dekker pair with the waiters */
}


int claimant_alive(struct ring_hdr *h)
{
    return proc_alive(atomic_load(&h->claim_pid), atomic_load(&h->claim_start));
}

void wake_all(struct ring_hdr *h)
{
    futex_wake_all(lo32(&h->tail));
    futex_wake_all(lo32(&h->head));
    futex_wake_all(lo32(&h->claim));
    futex_wake_all(lo32(&h->pclaim));
    futex_wake_all(&h->unfinished);
}

/* Before munmap: the SIGBUS handler must not claim a range that may be reused. */
void slot_unregister(int slot)
{
    if (slot >= 0 && slot < RING_SLOTS)
        atomic_store(&slot_base[slot], 0);
}

/* Create (zeroed header, robust process-shared error-checking mutexes, the magic published
 * last) or verify (magic, version, sizes against the object's `size`, owner uid) the header of
 * the `size`-byte mapping at base. `start`: the counters' first value (THEORY: counters and
 * wrap; 0 in production). Returns NULL, or why the object is not a usable ring. */
const char *rc_header_init(void *base, size_t size, int create, uint64_t capacity, uint32_t owner_pid,
                           uint64_t owner_start, uint64_t start)
{
    struct ring_hdr *h = base;
    if (size < 2 * HDR_SIZE || size % HDR_SIZE)
        return "object size is not a header page plus whole data pages";
    if (create) {
        if (capacity != size - HDR_SIZE || (capacity & (capacity - 1)))
            return "capacity must be a power of two filling the object";
        memset(h, 0, sizeof *h);
        h->version = RING_VERSION;
        h->hdr_size = HDR_SIZE;
        h->capacity = capacity;
        h->total_size = (uint64_t)size;
        h->owner_uid = (uint32_t)geteuid();
        h->owner_pid = owner_pid;
        h->owner_start = owner_start;
        h->msgs_in = h->msgs_out = start;
        h->head = h->tail = start & ~(uint64_t)(REC_HDR - 1); /* records are 16-byte aligned */
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
        int e1 = pthread_mutex_init(&h->prod_lock, &a), e2 = pthread_mutex_init(&h->cons_lock, &a);
        pthread_mutexattr_destroy(&a);
        if (e1 || e2)
            return "pthread_mutex_init failed";
        atomic_store_explicit(&h->magic, RING_MAGIC, memory_order_release); /* published last */
        return NULL;
    }
    if (atomic_load_explicit(&h->magic, memory_order_acquire) != RING_MAGIC)
        return "bad magic";
    if (h->version != RING_VERSION)
        return "unsupported version";
    if (h->hdr_size != HDR_SIZE || h->total_size != (uint64_t)size || h->capacity != (uint64_t)size - HDR_SIZE ||
        (h->capacity & (h->capacity - 1)))
        return "sizes in the header do not match the object";
    if (h->owner_uid != (uint32_t)geteuid())
        return "header names another owner uid";
    return NULL;
}

/* Fill the core's part of a handle for the verified mapping at base (registered for SIGBUS). */
void rc_bind(rc_ring *r, void *base, size_t size)
{
    r->hdr = base;
    r->data = (unsigned char *)base + HDR_SIZE;
    r->map_size = size;
    r->cap = r->hdr->capacity; /* verified by rc_header_init; never re-read */
    r->frag_max = (r->cap / 2 - REC_HDR) & ~(uint64_t)15u;
    r->slot = slot_register(base, size);
}

/* The process-wide setup: the mutex kind every ring lock word must carry (lock_word_bad). */
void rc_process_init(void)
{
    if (mutex_kind >= 0)
        return;
    pthread_mutexattr_t a;
    pthread_mutex_t probe;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    if (pthread_mutex_init(&probe, &a) == 0) {
        mutex_kind = probe.__data.__kind;
        pthread_mutex_destroy(&probe);
    }
    pthread_mutexattr_destroy(&a);
}

/* The record at head (THEORY: trust nothing): offset `off`, its header fields, `avail` =
 * tail - head (validated), and the message being reassembled, if any. NULL if it may be
 * taken, else why it is corrupt. */
const char *rc_check_record(const rc_ring *r, uint64_t off, uint32_t len, uint32_t flags, uint64_t total,
                            uint64_t avail, int has_partial, uint64_t ptotal, uint64_t filled)
{
    if (off + REC_HDR + len > r->cap || rec_size(len) > avail)
        return "its length runs past the end of the data area or past tail";
    if (flags & ~7u)
        return "unknown flags";
    if (flags & F_PAD)
        return flags != F_PAD || off + rec_size(len) != r->cap ? "a pad record must end at the end of the data area"
                                                                : NULL;
    if (len > r->frag_max)
        return "longer than the largest record of this ring";
    if ((flags & (F_FIRST | F_LAST)) == (F_FIRST | F_LAST))
        return total != len ? "a whole message's total differs from its length" : NULL;
    if (flags & F_FIRST)
        return total <= r->frag_max || total > TOTAL_LIMIT ? "a first fragment's total is out of range" : NULL;
    if (has_partial && (total != ptotal || filled + len > ptotal || ((flags & F_LAST) != 0) != (filled + len == ptotal)))
        return "a fragment does not continue the message being reassembled";
    return NULL;
}
