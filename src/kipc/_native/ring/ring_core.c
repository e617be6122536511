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
    if (r->spin > 0 && rc_rt.release) {
        if (deadline != INFINITY && mono() >= deadline)
            return R_TIMEOUT;
        /* THEORY: waiting. A short spin with the runtime lock held first: the other side of a
         * round trip usually answers within a microsecond, and releasing and retaking the GIL
         * costs about as much; HELD_SPINS pauses (~2 us) bound what other threads wait. */
        for (unsigned i = 0; i < HELD_SPINS; i++) {
            if (atomic_load_explicit(w, memory_order_acquire) != expect ||
                atomic_load_explicit(&h->closed, memory_order_relaxed) || closing(r))
                return is_broken(r) ? R_BROKEN : closing(r) ? R_LOCAL : OK;
            cpu_relax();
        }
    }
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
 * (multiples of 16) and 0 <= tail - head <= capacity. check_prod_fresh reads the live head;
 * check_prod uses the cached one (THEORY: cached counters) when it passes the same rule, else
 * reads the live one. Sets r->vtail (and r->chead when read); OK or R_CORRUPT. */
int check_prod_fresh(rc_ring *r, uint64_t *tailp, uint64_t *headp)
{
    struct ring_hdr *h = r->hdr;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
    if ((tail | head) & (REC_HDR - 1) || tail - head > r->cap)
        return corrupt(r, "tail %llu and head %llu (record edges 16-aligned, at most %llu apart expected)",
                       (unsigned long long)tail, (unsigned long long)head, (unsigned long long)r->cap);
    r->vtail = tail;
    r->chead = head;
    if (tailp)
        *tailp = tail;
    if (headp)
        *headp = head;
    return OK;
}

int check_prod(rc_ring *r, uint64_t *tailp, uint64_t *headp)
{
    uint64_t tail = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed), head = r->chead;
    if ((tail | head) & (REC_HDR - 1) || tail - head > r->cap)
        return check_prod_fresh(r, tailp, headp);
    r->vtail = tail;
    if (tailp)
        *tailp = tail;
    if (headp)
        *headp = head;
    return OK;
}

/* Under prod_lock: validate (check_prod) and say whether a record of `need` bytes fits at tail
 * (room, *pad set): 1 yes, 0 no (then *headp is the live head, for a wait on it), or -R_CORRUPT.
 * The live head is read only when the cached one says no. */
int prod_room(rc_ring *r, uint64_t need, uint64_t max_items, uint64_t *pad, uint64_t *headp)
{
    uint64_t tail, head;
    int rc = check_prod(r, &tail, &head);
    if (rc == OK && room(r, tail, head, need, max_items, pad))
        return 1;
    if (rc != OK || (rc = check_prod_fresh(r, &tail, &head)) != OK)
        return -rc;
    if (headp)
        *headp = head;
    return room(r, tail, head, need, max_items, pad);
}

/* Under cons_lock: head is ours, tail only moves away from it: the same rule. The cached tail
 * (THEORY: cached counters) is used when it shows data beyond head and passes the rule; else
 * the live tail is read (and cached). */
int check_cons(rc_ring *r, uint64_t *headp, uint64_t *tailp)
{
    struct ring_hdr *h = r->hdr;
    uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed), tail = r->ctail;
    if (tail == head || (tail | head) & (REC_HDR - 1) || tail - head > r->cap) {
        tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        if ((tail | head) & (REC_HDR - 1) || tail - head > r->cap)
            return corrupt(r, "head %llu and tail %llu (record edges 16-aligned, at most %llu apart expected)",
                           (unsigned long long)head, (unsigned long long)tail, (unsigned long long)r->cap);
        r->ctail = tail;
    }
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
    /* The commit. A seq_cst exchange is the store and the Dekker fence in one locked
     * instruction: with the seq_cst waiter-count load below it pairs with wait_word's seq_cst
     * increment and re-check (one of the two sides always sees the other). */
    atomic_exchange_explicit(&h->tail, new_tail, memory_order_seq_cst);
    atomic_store_explicit(&h->pj_valid, 0, memory_order_relaxed);
    if (atomic_load_explicit(&h->cons_waiters, memory_order_seq_cst))
        futex_wake_all(lo32(&h->tail));
}


/* Write the pad (if any) and a record header at the validated tail (r->vtail, check_prod:
 * never a re-read of the shared word, which a hostile peer may have changed since); returns
 * the payload pointer. */
unsigned char *place(rc_ring *r, uint64_t pad, uint64_t len, uint32_t flags, uint64_t total)
{
    uint64_t off = r->vtail & (r->cap - 1); /* cap: a power of two (rc_header_init): a mask */
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
        atomic_exchange_explicit(&h->head, new_head, memory_order_seq_cst); /* store + fence: see publish */
        atomic_store_explicit(&h->cj_valid, 0, memory_order_relaxed);
    } else {
        atomic_exchange_explicit(&h->head, new_head, memory_order_seq_cst);
    }
    if (atomic_load_explicit(&h->prod_waiters, memory_order_seq_cst))
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
    /* THEORY: cached counters. head is a value both words have had (head <= tail always); a
     * hint, range-checked against the live word on each use */
    r->chead = r->ctail = atomic_load_explicit(&r->hdr->head, memory_order_acquire);
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

/* ========================================================================= */
/* The produce / consume loops (THEORY): every binding (Python's _ring.c, the C API kipc_ring.h)
 * calls these; the runtime's part comes in through rc_rt. */

void rc_copy(void *dst, const void *src, uint64_t len)
{
    if (len >= BIG_COPY && rc_rt.release) {
        void *ts = rc_rt.release();
        memcpy(dst, src, len);
        rc_rt.reacquire(ts);
    } else {
        memcpy(dst, src, len);
    }
}

/* Copy bytes [from, from+len) of the concatenated parts to dst. */
static void gather(unsigned char *dst, const rc_part *parts, int n, uint64_t from, uint64_t len)
{
    for (int i = 0; i < n && len; i++) {
        uint64_t plen = parts[i].len;
        if (from >= plen) {
            from -= plen;
            continue;
        }
        uint64_t take = plen - from < len ? plen - from : len;
        memcpy(dst, (const char *)parts[i].buf + from, take);
        dst += take;
        len -= take;
        from = 0;
    }
}

static void gather_big(unsigned char *dst, const rc_part *parts, int n, uint64_t from, uint64_t len)
{
    if (len >= BIG_COPY && rc_rt.release) {
        void *ts = rc_rt.release();
        gather(dst, parts, n, from, len);
        rc_rt.reacquire(ts);
    } else {
        gather(dst, parts, n, from, len);
    }
}

void rc_drop_partial(rc_ring *r)
{
    if (r->partial) {
        if (rc_rt.obj_drop)
            rc_rt.obj_drop(r->partial);
        else
            free(r->partial);
    }
    r->partial = NULL;
    r->pbuf = NULL;
}

void rc_drop_pdata(rc_ring *r)
{
    if (r->pdata && rc_rt.obj_drop)
        rc_rt.obj_drop(r->pdata);
    r->pdata = NULL;
}

/* In a forked child, or before unmapping: this handle's claims end (THEORY: claims). unmapping:
 * a claimed partial is dropped (its rest is skipped), a half-written message made stale. */
void rc_forget(rc_ring *r)
{
    if (r->hdr && r->partial)
        claim_clear(r->hdr, r->token);
    if (r->hdr && r->pdata && atomic_load(&r->hdr->pclaim) == r->token)
        atomic_store(&r->hdr->pclaim_beat, 0);
    rc_drop_partial(r);
    rc_drop_pdata(r);
    r->filled = r->ptotal = 0;
}

/* Wait, holding no lock, until a record of `need` bytes fits (and an item slot is free);
 * then take prod_lock and re-check. Returns OK with the lock held and *pad set, or a
 * state (nb: R_EMPTY when there is no room now or the lock is busy). */
int rc_reserve(rc_ring *r, uint64_t need, uint64_t max_items, double deadline, int nb, uint64_t *pad)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        if (atomic_load_explicit(&h->closed, memory_order_relaxed))
            return R_CLOSED;
        uint64_t pc = atomic_load_explicit(&h->pclaim, memory_order_acquire);
        if (pc && pc != r->token && pclaim_live(h)) {
            /* another handle's fragmented message is half written: wait for its claim to end */
            if (nb)
                return R_EMPTY;
            double until = mono() + PROBE;
            int rc = wait_word(r, lo32(&h->pclaim), (uint32_t)pc, &h->pclaim_waiters, until < deadline ? until : deadline);
            if (rc != OK && !(rc == R_TIMEOUT && until < deadline))
                return rc;
            continue;
        }
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint64_t head = r->chead; /* THEORY: cached counters; the live head only if it says no */
        /* tail read before head: tail - head may be negative (consumers moved on), never above
         * capacity, and both are record edges; otherwise look again under the lock */
        int odd = ((tail | head) & (REC_HDR - 1)) || (int64_t)(tail - head) > (int64_t)r->cap;
        if (odd || !room(r, tail, head, need, max_items, pad)) {
            head = atomic_load_explicit(&h->head, memory_order_acquire);
            odd = ((tail | head) & (REC_HDR - 1)) || (int64_t)(tail - head) > (int64_t)r->cap;
            if (!odd)
                r->chead = head;
        }
        if (odd || room(r, tail, head, need, max_items, pad)) {
            int rc = lock_ring(r, 1, deadline, nb);
            if (rc != OK)
                return rc;
            if (odd) {
                /* the live pair looked impossible: check it live under the lock (the cached
                 * head may be fine while the shared word is garbage); else a transient */
                rc = check_prod_fresh(r, NULL, NULL);
                unlock_ring(r, 1);
                if (rc != OK)
                    return rc;
                continue;
            }
            pc = atomic_load(&h->pclaim);
            if (pc && (pc == r->token || !pclaim_live(h))) {
                /* our own half-written message (another message now), or a dead or stale
                 * claimant's: abandoned */
                if (pc != r->token)
                    atomic_fetch_add(&h->repairs, 1);
                pclaim_end(h, pc, 1);
                if (pc == r->token)
                    rc_drop_pdata(r);
            } else if (pc) {
                unlock_ring(r, 1); /* claimed meanwhile: wait for it above */
                continue;
            }
            int fits = prod_room(r, need, max_items, pad, NULL);
            if (fits < 0) {
                unlock_ring(r, 1);
                return -fits;
            }
            if (fits && !atomic_load_explicit(&h->closed, memory_order_relaxed))
                return OK;
            unlock_ring(r, 1); /* another producer took the room meanwhile: look again */
            continue;
        }
        if (nb) {
            if (!r->fail_valid) { /* wait("send") waits for head to move past this */
                r->fail_head = head;
                r->fail_valid = 1;
            }
            return R_EMPTY;
        }
        int rc = wait_word(r, lo32(&h->head), (uint32_t)head, &h->prod_waiters, deadline);
        if (rc != OK)
            return rc;
    }
}

/* A non-blocking attempt at a fragmented message (THEORY: producer claims): write the
 * fragments that fit now; if some remain, claim the message for this handle (pclaim),
 * keep the data object and return R_EMPTY; the next try_send of the *same object* on this
 * handle resumes it. */
static int produce_frag_nb(rc_ring *r, const rc_part *parts, int n, uint64_t total, uint64_t max_items, void *obj)
{
    struct ring_hdr *h = r->hdr;
    uint64_t pad;
    int rc, resume = r->pdata == obj && obj && atomic_load(&h->pclaim) == r->token;
    if (resume) {
        rc = lock_ring(r, 1, 0.0, 1);
        if (rc != OK)
            return rc; /* busy: R_EMPTY */
        if (atomic_load(&h->pclaim) != r->token) { /* taken over (stale) meanwhile: start again */
            unlock_ring(r, 1);
            rc_drop_pdata(r);
            return R_EMPTY;
        }
    } else {
        rc = rc_reserve(r, rec_size(r->frag_max), max_items, 0.0, 1, &pad);
        if (rc != OK)
            return rc;
        rc_drop_pdata(r);
        r->pdone = 0;
        atomic_store_explicit(&h->frag_active, 1, memory_order_release);
    }
    uint64_t done = r->pdone, head = 0;
    while (done < total) {
        uint64_t chunk = total - done < r->frag_max ? total - done : r->frag_max;
        int last = done + chunk == total;
        if (atomic_load_explicit(&h->closed, memory_order_relaxed)) {
            rc = R_CLOSED;
            goto abort;
        }
        int fits = prod_room(r, rec_size(chunk), 0, &pad, &head);
        if (fits < 0) {
            rc = -fits;
            goto abort;
        }
        if (!fits)
            break; /* head: the live one */
        uint64_t tail = r->vtail;
        unsigned char *dst = place(r, pad, chunk, (done == 0 ? F_FIRST : 0) | (last ? F_LAST : 0), total);
        gather_big(dst, parts, n, done, chunk);
        if (is_broken(r)) {
            rc = R_BROKEN;
            goto abort;
        }
        uint64_t msgs = atomic_load_explicit(&h->msgs_in, memory_order_relaxed);
        publish(h, tail + pad + rec_size(chunk), msgs + (last ? 1 : 0));
        done += chunk;
    }
    if (done == total) {
        atomic_store_explicit(&h->frag_active, 0, memory_order_release);
        pclaim_end(h, r->token, 0);
        rc_drop_pdata(r);
        r->pdone = 0;
        unlock_ring(r, 1);
        return OK;
    }
    /* no room for the next fragment now: the message stays claimed by this handle */
    r->pdone = done;
    if (!r->pdata && obj && rc_rt.obj_keep)
        r->pdata = rc_rt.obj_keep(obj);
    atomic_store(&h->pclaim_beat, mono_ns());
    if (!resume) {
        if (!r->start) {
            char state;
            if (read_stat(r->pid, &state, &r->start) != 0)
                r->start = 0;
        }
        atomic_store(&h->pclaim_pid, r->pid);
        atomic_store(&h->pclaim_start, r->start);
        atomic_store(&h->pclaim, r->token);
    }
    r->fail_head = head; /* wait("send") waits for head to move past this */
    r->fail_valid = 1;
    unlock_ring(r, 1);
    return R_EMPTY;
abort:
    if (resume || atomic_load(&h->pclaim) == r->token)
        pclaim_end(h, r->token, 1);
    else
        frag_abort(h);
    rc_drop_pdata(r);
    unlock_ring(r, 1);
    return rc;
}

/* One message of `total` bytes from the parts. nb: a non-blocking attempt (R_EMPTY when
 * there is no room now; `obj` identifies the data for a resumed fragmented message); a
 * fragmented one, once started, waits for the rest (THEORY). */
int rc_produce(rc_ring *r, const rc_part *parts, int n, uint64_t total, double deadline, uint64_t max_items, int nb,
               void *obj)
{
    struct ring_hdr *h = r->hdr;
    uint64_t pad;
    if (total <= r->frag_max) {
        uint64_t need = rec_size(total);
        int rc = rc_reserve(r, need, max_items, deadline, nb, &pad);
        if (rc != OK)
            return rc;
        unsigned char *dst = place(r, pad, total, F_FIRST | F_LAST, total);
        gather_big(dst, parts, n, 0, total);
        if (is_broken(r)) {
            unlock_ring(r, 1);
            return R_BROKEN; /* never publish a record written into vanished pages */
        }
        publish(h, r->vtail + pad + need, atomic_load_explicit(&h->msgs_in, memory_order_relaxed) + 1);
        unlock_ring(r, 1);
        return OK;
    }
    if (nb)
        return produce_frag_nb(r, parts, n, total, max_items, obj);
    /* Fragments: wait (no lock) until the first fits, then hold prod_lock across all of
     * them, waiting for space under it (the one wait under a lock); abort (frag_active = 0)
     * on timeout, close or a signal. */
    int rc = rc_reserve(r, rec_size(r->frag_max), max_items, deadline, nb, &pad);
    if (rc != OK)
        return rc;
    rc_drop_pdata(r); /* a half-written message of ours was abandoned by rc_reserve */
    atomic_store_explicit(&h->frag_active, 1, memory_order_release);
    uint64_t done = 0;
    int first = 1;
    while (done < total) {
        uint64_t chunk = total - done < r->frag_max ? total - done : r->frag_max;
        int last = done + chunk == total;
        while (!first) {
            if (atomic_load_explicit(&h->closed, memory_order_relaxed)) {
                rc = R_CLOSED;
                goto abort;
            }
            uint64_t head = 0;
            int fits = prod_room(r, rec_size(chunk), 0, &pad, &head);
            if (fits < 0) {
                rc = -fits;
                goto abort;
            }
            if (fits)
                break;
            rc = wait_word(r, lo32(&h->head), (uint32_t)head, &h->prod_waiters, deadline);
            if (rc != OK)
                goto abort;
        }
        first = 0;
        unsigned char *dst = place(r, pad, chunk, (done == 0 ? F_FIRST : 0) | (last ? F_LAST : 0), total);
        gather_big(dst, parts, n, done, chunk);
        if (is_broken(r)) {
            rc = R_BROKEN;
            goto abort;
        }
        uint64_t msgs = atomic_load_explicit(&h->msgs_in, memory_order_relaxed);
        publish(h, r->vtail + pad + rec_size(chunk), msgs + (last ? 1 : 0));
        done += chunk;
    }
    atomic_store_explicit(&h->frag_active, 0, memory_order_release);
    unlock_ring(r, 1);
    return OK;
abort:
    frag_abort(h);
    unlock_ring(r, 1);
    return rc;
}

/* A whole record at head was copied out by the caller (R_WHOLE): consume it, unlock. */
int rc_take_whole(rc_ring *r, uint64_t next)
{
    if (is_broken(r)) { /* the copy may hold zeros from vanished pages: not consumed */
        unlock_ring(r, 0);
        return R_BROKEN;
    }
    advance(r->hdr, next, 1);
    unlock_ring(r, 0);
    return OK;
}

/* With cons_lock held: take the records at head. Returns R_WHOLE (lock kept), OK (a
 * reassembled message, lock released), R_EMPTY (lock released: nothing deliverable now —
 * empty, mid-message, or another live consumer's claim), R_ERR or a state (lock released). */
static int take_locked(rc_ring *r, double deadline, const void *ex, size_t exn, rc_msg *m)
{
    struct ring_hdr *h = r->hdr;
    int rc;
    for (unsigned iter = 1;; iter++) {
        /* bounded (each turn moves head >= 16 bytes towards a tail <= capacity away), yet
         * checked like every loop: the deadline and pending signals */
        if ((iter & 255) == 0) {
            if (mono() >= deadline) {
                rc = R_TIMEOUT;
                break;
            }
            if (rc_rt.interrupted && rc_rt.interrupted()) {
                rc = R_ERR;
                break;
            }
        }
        uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
        if (foreign_claim(r, claim)) {
            if (claimant_alive(h)) {
                rc = R_EMPTY;
                break;
            }
            claim_clear(h, claim); /* its owner died: the rest of its message is skipped below */
            atomic_fetch_add(&h->repairs, 1);
        }
        uint64_t head, tail;
        if ((rc = check_cons(r, &head, &tail)) != OK)
            break;
        if (is_broken(r)) {
            rc = R_BROKEN;
            break;
        }
        if (head == tail) {
            /* Mid-message and the producer aborted (timeout) or died (repaired): drop ours. */
            if (r->partial && !atomic_load_explicit(&h->frag_active, memory_order_acquire) &&
                atomic_load_explicit(&h->tail, memory_order_acquire) == tail) {
                rc_drop_partial(r);
                claim_clear(h, r->token);
            }
            rc = R_EMPTY;
            break;
        }
        uint64_t off = head & (r->cap - 1);
        struct rec *rec = (struct rec *)(r->data + off);
        uint32_t len = rec->len, flags = rec->flags;
        uint64_t total = rec->total;
        if (is_broken(r)) { /* the record header was on a vanished page: do not advance */
            rc = R_BROKEN;
            break;
        }
        const char *bad = rc_check_record(r, off, len, flags, total, tail - head, r->partial != NULL, r->ptotal, r->filled);
        if (bad) {
            rc = corrupt(r, "record at offset %llu (len %u, flags 0x%x, total %llu): %s", (unsigned long long)off, len,
                         flags, (unsigned long long)total, bad);
            break;
        }
        uint64_t next = head + rec_size(len);
        if (flags & F_PAD) {
            advance(h, next, 0);
            continue;
        }
        if (flags & F_FIRST) {
            if (r->partial) { /* an aborted or orphaned message: never delivered */
                rc_drop_partial(r);
                claim_clear(h, r->token);
            }
        } else if (!r->partial) {
            advance(h, next, (flags & F_LAST) != 0); /* the rest of a message a dead consumer claimed */
            continue;
        }
        unsigned char *src = r->data + off + REC_HDR;
        if (ex && (flags & F_FIRST) && (len < exn || memcmp(src, ex, exn) != 0)) {
            /* not the kind the caller asked for: leave it at head, say what it is */
            r->mis_total = total;
            r->mis_n = len < sizeof r->mis_head ? (int)len : (int)sizeof r->mis_head;
            memcpy(r->mis_head, src, (size_t)r->mis_n);
            rc = R_MISMATCH;
            break;
        }
        if ((flags & (F_FIRST | F_LAST)) == (F_FIRST | F_LAST)) {
            m->src = src;
            m->len = len;
            m->next = next;
            m->msg = NULL;
            return R_WHOLE; /* the caller copies it or keeps it as a view */
        }
        if (flags & F_FIRST) {
            void *obj;
            if (rc_rt.msg_alloc) {
                obj = rc_rt.msg_alloc(r, total, &r->pbuf);
            } else {
                obj = total > SIZE_MAX - 64 ? NULL : malloc((size_t)total);
                r->pbuf = obj;
            }
            if (!obj) {
                rc = R_ERR; /* message left in place: nothing lost */
                break;
            }
            r->partial = obj;
            r->ptotal = total;
            r->filled = 0;
            claim_set(r);
        }
        rc_copy(r->pbuf + r->filled, src, len);
        if (is_broken(r)) {
            rc = R_BROKEN;
            break;
        }
        r->filled += len;
        if (flags & F_LAST) {
            advance(h, next, 1);
            claim_clear(h, r->token);
            unlock_ring(r, 0);
            m->msg = r->partial;
            m->src = r->pbuf;
            m->len = r->ptotal;
            r->partial = NULL;
            r->pbuf = NULL;
            return OK; /* rc_check_record made filled == ptotal */
        }
        advance(h, next, 0);
    }
    unlock_ring(r, 0);
    return rc;
}

/* Receive one message. Waits (nb: never) holding no lock: for data, for another consumer's
 * claim to end, or (mid-message) for the rest; takes cons_lock only to take records.
 * Returns R_WHOLE or OK (see rc_msg), R_EMPTY (nb: nothing now), R_ERR or a state. */
int rc_consume(rc_ring *r, double deadline, int nb, const void *ex, size_t exn, rc_msg *m)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        if (is_broken(r))
            return R_BROKEN;
        uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        uint64_t tail = r->ctail; /* THEORY: cached counters; the live tail unless it shows data */
        if (tail == head || (tail | head) & (REC_HDR - 1) || tail - head > r->cap) {
            tail = atomic_load_explicit(&h->tail, memory_order_acquire);
            r->ctail = tail;
        }
        if (tail != head) /* the record's lines come in while cons_lock is taken (THEORY: cached counters) */
            rec_prefetch(r->data, r->cap, head);
        int rc;
        if (foreign_claim(r, claim) && claimant_alive(h)) {
            /* another consumer is mid-message: its fragments are at head */
            if (nb)
                return R_EMPTY;
            double until = mono() + PROBE; /* then probe the claimant's liveness again */
            rc = wait_word(r, lo32(&h->claim), (uint32_t)claim, &h->claim_waiters, until < deadline ? until : deadline);
            if (rc == R_TIMEOUT && until < deadline)
                continue;
            if (rc != OK)
                return rc;
            continue;
        }
        if (head == tail) {
            if (r->partial) {
                if (atomic_load_explicit(&h->frag_active, memory_order_acquire)) {
                    if (nb)
                        return R_EMPTY;
                    double until = mono() + PROBE;
                    rc = wait_word(r, lo32(&h->tail), (uint32_t)tail, &h->cons_waiters, until < deadline ? until : deadline);
                    if (rc == R_TIMEOUT && until < deadline) {
                        probe_producer(h); /* EBUSY while the producer lives; repairs a dead one */
                        continue;
                    }
                    if (rc != OK) {
                        if (rc == R_TIMEOUT) /* a short timeout probes too: a dead producer's message */
                            probe_producer(h); /* is then dropped by the next call */
                        return rc;
                    }
                    continue;
                }
                /* the producer aborted or died: take_locked drops the partial */
            } else {
                if (atomic_load_explicit(&h->closed, memory_order_acquire))
                    return R_CLOSED;
                if (nb)
                    return R_EMPTY;
                rc = wait_word(r, lo32(&h->tail), (uint32_t)tail, &h->cons_waiters, deadline);
                if (rc != OK)
                    return rc;
                continue;
            }
        }
        rc = lock_ring(r, 0, deadline, nb);
        if (rc != OK)
            return rc;
        rc = take_locked(r, nb ? INFINITY : deadline, ex, exn, m);
        if (rc != R_EMPTY)
            return rc;
        /* nothing deliverable after all: look again (waits or, nb, returns R_EMPTY) */
    }
}

/* wait("recv"): block, consuming nothing and holding no lock, until a recv attempt may
 * succeed (data at head that is not another live consumer's claim, and cons_lock free),
 * the deadline passes, or the handle is closed. Returns OK or R_ERR (interrupted). */
int rc_wait_recv(rc_ring *r, double deadline)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        if (is_broken(r) || atomic_load(&h->closed))
            return OK;
        uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        int rc;
        double until = mono() + PROBE;
        if (until > deadline)
            until = deadline;
        if (foreign_claim(r, claim) && claimant_alive(h)) {
            rc = wait_word(r, lo32(&h->claim), (uint32_t)claim, &h->claim_waiters, until);
        } else if (head == tail && !(r->partial && !atomic_load(&h->frag_active))) {
            rc = wait_word(r, lo32(&h->tail), (uint32_t)tail, &h->cons_waiters, r->partial ? until : deadline);
            if (rc == R_TIMEOUT && r->partial)
                probe_producer(h);
        } else {
            /* ready: wait until no other consumer holds cons_lock (a view, a copy) */
            rc = lock_ring(r, 0, deadline, 0);
            if (rc == OK)
                unlock_ring(r, 0);
            return rc == R_ERR ? R_ERR : OK;
        }
        if (rc == R_ERR)
            return R_ERR;
        if (rc == R_TIMEOUT && mono() >= deadline)
            return OK;
        if (rc != OK && rc != R_TIMEOUT)
            return OK; /* closed here, broken: the caller's attempt reports it */
    }
}

/* wait("send"): until some space was freed since the last failed try_send (or the ring is
 * not full) and prod_lock is free, the deadline passes, or the handle is closed. */
int rc_wait_send(rc_ring *r, double deadline)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        if (is_broken(r) || atomic_load(&h->closed))
            return OK;
        uint64_t pc = atomic_load_explicit(&h->pclaim, memory_order_acquire);
        if (pc && pc == r->token)
            atomic_store(&h->pclaim_beat, mono_ns()); /* our half-written message: still wanted */
        if (pc && pc != r->token && pclaim_live(h)) {
            double until = mono() + PROBE;
            int rc = wait_word(r, lo32(&h->pclaim), (uint32_t)pc, &h->pclaim_waiters, until < deadline ? until : deadline);
            if (rc == R_ERR)
                return R_ERR;
            if (rc != OK && !(rc == R_TIMEOUT && until < deadline))
                return OK;
            continue;
        }
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        uint64_t used = tail - head;
        int ready = r->fail_valid ? head != r->fail_head : ((int64_t)used < 0 || used < r->cap);
        if (ready) {
            r->fail_valid = 0;
            int rc = lock_ring(r, 1, deadline, 0);
            if (rc == OK)
                unlock_ring(r, 1);
            return rc == R_ERR ? R_ERR : OK;
        }
        double until = pc == r->token && pc ? mono() + 0.25 : deadline; /* beat a held claim */
        int rc = wait_word(r, lo32(&h->head), (uint32_t)head, &h->prod_waiters, until < deadline ? until : deadline);
        if (rc == R_ERR)
            return R_ERR;
        if (rc == R_TIMEOUT && until < deadline)
            continue;
        if (rc != OK)
            return OK;
    }
}

/* ready(send?): could an attempt in that direction succeed now (or report an error)? */
int rc_ready(rc_ring *r, int send)
{
    struct ring_hdr *h = r->hdr;
    uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
    uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
    if (atomic_load(&h->closed))
        return 1;
    if (send) { /* as wait("send"): space freed since the last failed try_send, or not full */
        uint64_t used = tail - head, pc = atomic_load(&h->pclaim);
        if (pc && pc != r->token && pclaim_live(h))
            return 0;
        return r->fail_valid ? head != r->fail_head : ((int64_t)used < 0 || used < r->cap);
    }
    return !(foreign_claim(r, claim) && claimant_alive(h)) &&
           (head != tail || (r->partial && !atomic_load(&h->frag_active)));
}
