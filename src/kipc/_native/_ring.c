/*
 * kipc._native._ring — the shared-memory ring behind ring:// and kipc.Queue.
 *
 * THEORY OF OPERATION
 * ===================
 *
 * Layout. One POSIX shm object = a 4096-byte header page + `capacity` data bytes
 * (a multiple of 4096). The header keeps each writer's words on its own cache
 * line: identity (magic, version, sizes, owner uid/pid/start time: immutable
 * after init), the producers' robust mutex, the consumers' robust mutex, the
 * producer line (tail, msgs_in, consumer-waiter count, producer journal), the
 * consumer line (head, msgs_out, producer-waiter count, consumer journal), the
 * claim line (which consumer reassembles the message at head, see Claims), the
 * producer-claim line (a half-written fragmented message, see Producer claims) and
 * the task line (JoinableQueue's unfinished count). Header version 2 (v1 had
 * no claim lines; a v1 peer is refused at attach by the version check).
 *
 * Records. head and tail are 64-bit byte counters that only grow; a record
 * starts at counter % capacity and never wraps: when it would not fit before
 * the end, the producer writes a PAD record up to the end and starts at 0.
 * Every record is a 16-byte header {u32 len, u32 flags, u64 total} + payload,
 * rounded up to 16. A message up to `frag_max` (capacity/2 - 16) is one
 * record (FIRST|LAST); a bigger one is a run of fragments FIRST .. LAST whose
 * FIRST carries the total length. capacity/2 guarantees any record fits an
 * empty ring whatever the current offset.
 *
 * Memory ordering. The commit word is `tail`: a producer copies the payload
 * and the record header into the data area, then stores tail with RELEASE.
 * A consumer loads tail with ACQUIRE, so every byte below tail is visible and
 * complete: a reader can never see a torn record. Symmetrically the consumer
 * copies the payload out and then stores head with RELEASE; a producer loads
 * head with ACQUIRE before reusing the space.
 *
 * Many producers, many consumers. Producers serialize on `prod_lock`,
 * consumers on `cons_lock` (1 producer + 1 consumer contend on nothing: each
 * lock is an uncontended CAS). A lock is held only to write or take records,
 * never to wait for data or space (below), with two exceptions: a producer
 * holds prod_lock across all fragments of one message, waiting for space
 * between them, so fragments never interleave; and a received view / an open
 * loan holds its lock until released (documented in ring.py). FIFO holds per
 * producer (and globally, since commits are serialized).
 *
 * Time. Every call takes an absolute deadline: CLOCK_MONOTONIC seconds as a
 * double, INFINITY = never (kipc._base.Deadline.end, whose .timeout names the
 * error: 0 -> WouldBlock "would block", t -> Timeout "timed out after t s").
 * The hot path recognises the FOREVER object by identity. Every wait loop
 * checks the deadline: futex waits, lock waits and reassembly alike.
 *
 * Waiting without locks. A call first looks without any lock (tail, head and
 * the claim word are atomics): a consumer that finds the ring empty, or a
 * producer that finds no room, waits right there; only then does it take
 * the lock, re-check, act and unlock (another peer may have been first: it
 * looks again). A waiter spins for `spin` seconds watching the 32-bit low half
 * of the other side's counter, then increments the waiter count (seq_cst),
 * re-checks, and sleeps in FUTEX_WAIT (shared, not FUTEX_PRIVATE: the futex is
 * keyed on the shm page) with the observed value checked by the kernel. The
 * other side stores its counter, issues a seq_cst fence and calls FUTEX_WAKE
 * only if the waiter count is non-zero (the Dekker pair store/fence/load on
 * both sides means one of them always sees the other). Sleeps are sliced
 * (SLICE, 50 ms) and EINTR ends a slice, so Ctrl-C is checked with the GIL held
 * (PyErr_CheckSignals); the GIL is released while spinning, sleeping, waiting
 * for a lock and copying payloads of 256 KiB or more. Locks are taken with
 * pthread_mutex_trylock, then pthread_mutex_clocklock in SLICE steps up to the
 * deadline (a SIGSTOPped holder delays nobody past its deadline); EOWNERDEAD
 * repairs as below. A consumer SIGSTOPped while it waits for data holds no
 * lock, so the other consumers keep receiving.
 *
 * Readiness without consuming (asyncio, kipc.wait). wait(op, deadline) blocks
 * like the waits above until an attempt in that direction may succeed — recv:
 * data at head that is not another live consumer's claim; send: head moved
 * since the last try_send found no room (or the ring is not full) — and the
 * lock is free (taken and dropped at once: a view holder or a long copy would
 * otherwise make the caller spin); or until the deadline passes or the handle
 * is closed here. It returns None in every case and consumes nothing; the
 * caller then makes a non-blocking attempt (try_send -> False / try_recv ->
 * None when not possible now). ready(op) is the same test without waiting.
 *
 * Producer claims: fragmented messages without waiting (try_send). A message
 * over frag_max cannot be written at once. try_send writes the fragments that
 * fit, and if some remain it claims the message for its handle in the header
 * {pclaim = token, pclaim_pid, pclaim_start, pclaim_beat = now}, keeps a
 * reference to the data object and returns False; frag_active stays 1, so
 * consumers wait for the rest. The next try_send of the *same object* on the
 * handle resumes it (the asyncio template retries with the object it encoded
 * once); any other send on the handle abandons it (frag_active = 0: consumers
 * drop what they reassembled) before its own message. Other producers that
 * find a live foreign pclaim wait on the pclaim word (no lock) within their
 * deadlines. A claim is taken over (abandoned, under prod_lock) by a producer,
 * or by a consumer's probe, when its process is dead or its beat is older than
 * 1 s: a cancelled asend, or a closed or collected handle (close sets the beat
 * to 0), blocks nobody for longer, and delivers nothing. The claimant's waits
 * (_wait("send")) refresh the beat. So a producer and a consumer on one event
 * loop can move a message bigger than the ring.
 *
 * Claims: reassembly without holding cons_lock. A consumer that takes a FIRST
 * fragment creates the message (bytes of `total`) in its handle and publishes
 * a claim in the header: {claim = its token (pid << 32 | serial), claim_pid,
 * claim_start (process start time)}. It copies what is there, advances head
 * (freeing space for the producer), and unlocks; it waits for the rest like
 * any waiter (no lock), probing the producer lock every PROBE (10 ms) so a
 * dead producer is repaired. When its deadline passes mid-message, recv raises
 * Timeout and the claim stays: the partial message stays in this handle and
 * the next recv (or try_recv) on the same handle, from any thread, resumes it.
 * Other consumers that find a foreign claim wait on the claim word (no lock)
 * until it ends, honouring their deadlines (the fragments at head belong to
 * the claimant: FIFO). Nothing committed is torn or lost: the message is only
 * ever returned whole, to the claimant. A claim ends when its message is
 * complete (LAST), when the producer aborted (a FIRST arrives, or the ring is
 * empty with frag_active == 0), when its handle is closed or collected (the
 * rest of the message is then skipped by the next consumer, as for a dead
 * consumer: the one way a committed message can go, and only by its
 * claimant's own close), or when its process is found dead (kill(pid, 0) and
 * /proc/PID/stat: gone, a zombie, or another start time) by a consumer that
 * holds cons_lock, which clears it. A forked child does not inherit its
 * parent's claim (pthread_atfork bumps a generation; the child's handle gets a
 * new token and drops its copy of the partial).
 *
 * Close from any thread (this process). Each handle counts its calls in flight
 * (an atomic, incremented before a call looks at `closing`, decremented when
 * it leaves; views and loans count too, under the GIL). interrupt() sets
 * `closing` and wakes every futex word of the ring; every wait checks `closing`
 * between slices and after each wake-up, lock waits every SLICE, so each
 * call blocked on this handle raises ChannelClosed ("closed by this process")
 * within one slice. unmap() (ring.py's _close) sets `closing` too and unmaps
 * at once if nothing is in flight, else the last call, view or loan to leave
 * unmaps: the mapping is never unmapped under a call. A view still held at
 * close keeps the mapping; releasing it consumes its message as usual. A loan
 * still open at close publishes nothing: commit() raises ChannelClosed.
 *
 * Crash cases (a peer may die at any instruction):
 *  - Producer dies before its tail store: the record is not committed and
 *    the next producer overwrites it. The mutex is robust
 *    (PTHREAD_MUTEX_ROBUST + PTHREAD_PROCESS_SHARED): the next locker gets
 *    EOWNERDEAD and repairs before pthread_mutex_consistent().
 *  - Producer dies between its msgs_in and tail stores: both are written
 *    from a journal {tail, msgs} that is marked valid (release) only once the
 *    record is complete; repair rolls the journal forward, so tail and the
 *    message count never disagree.
 *  - Producer dies (or times out) between fragments: `frag_active` stays 1
 *    (abort sets it to 0). Repair clears it. The claimant that sees no more
 *    data and frag_active == 0 drops its partial; while it waits it try-locks
 *    prod_lock every PROBE, which detects a dead owner even if no new producer
 *    comes. A FIRST record arriving mid-reassembly also drops the partial. The
 *    consumer never returns a partial message. (A dead producer may leave the
 *    ring full of its aborted message: space comes back as consumers skip it.)
 *  - Consumer dies before its head store: the message stays and the next
 *    consumer receives it (nothing committed is lost). After the store it was
 *    consumed. head/msgs_out use the same journal scheme as the producer.
 *  - Consumer dies mid-reassembly (claim) or holding a view: its claim is
 *    cleared (dead pid) and the next consumer skips continuation fragments
 *    without a FIRST (the dead one had claimed that message) and counts the
 *    LAST one consumed.
 *  - Nobody repairs a lock whose owner is alive: a SIGSTOPped producer
 *    mid-message stalls the producers, a stopped claimant the consumers;
 *    their waiters time out per their deadlines. (A stopped producer
 *    *claimant* — try_send, no lock held — is taken over after 1 s.)
 *  - Attach (Python side) verifies type, owner uid, mode bits and size with
 *    fstat before mmap, and this module verifies magic, version and sizes in
 *    the header, so a truncated or planted object is refused, not SIGBUSed.
 *  - A same-user peer truncating the object *after* attach (ftruncate on
 *    /dev/shm/kipc.ring.NAME): touching a page past the new end raises SIGBUS.
 *    Every mapping is registered in a fixed table (RING_SLOTS); a SIGBUS
 *    handler (SA_SIGINFO | SA_NODEFER) that finds the faulting address in a
 *    registered ring maps private zero pages from that page to the end of the
 *    mapping (MAP_FIXED: mmap is a plain syscall, safe in a handler), marks the
 *    slot broken and returns, so the faulting copy or load completes on zeros.
 *    No longjmp: no lock, GIL state or glibc robust-mutex list is left
 *    half-updated. Every loop and every copy checks the broken mark before
 *    it publishes, advances or returns data, and the call raises BadObject
 *    ("truncated by another process"); later calls on that handle too. If the
 *    header page survived, `closed` is set to 2 (broken) in it and every waiter
 *    is woken, so the other peers raise BadObject too. Faults outside a
 *    registered ring go to the previous handler (faulthandler, ASan, or the
 *    default action: re-raised, the process dies as it would have). Limits:
 *    a view or loan read by user code during the truncation sees zeros (the
 *    next ring call raises); a ring mapped beyond the RING_SLOTS table is
 *    unprotected; a thread that held a ring lock in a vanished header page
 *    leaves a stale entry in its robust-mutex list (harmless: it points at
 *    private zero pages).
 *
 * Counters and wrap. head, tail, msgs_in and msgs_out wrap modulo 2^64 and
 * every comparison is a modular difference (tail - head, in - out); the futex
 * words are their low 32 bits, compared only for inequality, so the 2^32 wrap
 * of a futex word is invisible. capacity is a power of two so that
 * counter % capacity stays continuous across the 2^64 wrap (2^64 is a multiple
 * of capacity; with, say, 12 KiB the offset would jump at the wrap and tear
 * records). TEST HOOK: when the environment variable KIPC_RING_TEST_START
 * holds an integer at creation, the four counters start at that value (head
 * and tail rounded down to a multiple of 16, as every record edge is; the
 * reliability tests start them just below 2^32 and 2^64). Never set it in
 * production; it only affects rings created while it is set.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the futex words are the low halves of 64-bit counters: little-endian only"
#endif

#define RING_MAGIC 0x474e495243504b4bULL /* "KKPCRING" */
#define RING_VERSION 2u
#define HDR_SIZE 4096u
#define REC_HDR 16u
#define F_FIRST 1u
#define F_LAST 2u
#define F_PAD 4u
#define BIG_COPY (256u * 1024u)
#define VIEW_MIN (16u * 1024u) /* recv(view=2): a view only for messages this big */
#define SLICE 0.05 /* seconds between signal / local-close checks while blocked */
#define PROBE 0.01 /* seconds between peer-liveness probes (producer mid-message, claimant) */
#define PCLAIM_STALE_NS 1000000000ull /* a producer claim without an attempt for 1 s is taken over */

#define CL __attribute__((aligned(64)))

struct ring_hdr {
    /* identity: immutable once magic is published */
    _Atomic uint64_t magic;
    uint32_t version, hdr_size;
    uint64_t capacity, total_size;
    uint32_t owner_uid, owner_pid;
    uint64_t owner_start;
    _Atomic uint32_t closed;      /* creator closed the channel */
    _Atomic uint32_t frag_active; /* a producer is mid fragmented message */
    _Atomic uint32_t attach_pending; /* Queue: pickled references not yet attached */
    _Atomic uint32_t repairs;        /* locks recovered from a dead owner (EOWNERDEAD) */

    CL pthread_mutex_t prod_lock;
    CL pthread_mutex_t cons_lock;

    CL _Atomic uint64_t tail; /* commit word */
    _Atomic uint64_t msgs_in;
    _Atomic uint32_t cons_waiters;
    _Atomic uint32_t pj_valid;
    uint64_t pj_tail, pj_msgs;

    CL _Atomic uint64_t head;
    _Atomic uint64_t msgs_out;
    _Atomic uint32_t prod_waiters;
    _Atomic uint32_t cj_valid;
    uint64_t cj_head, cj_msgs;

    /* reassembly claim (see THEORY: waiting and claims); written under cons_lock */
    CL _Atomic uint64_t claim; /* token of the handle reassembling the message at head, 0 = none */
    _Atomic uint32_t claim_pid;
    _Atomic uint32_t claim_waiters;
    _Atomic uint64_t claim_start;

    /* producer claim: a fragmented message half written by a non-blocking attempt (asyncio);
     * written under prod_lock (THEORY: producer claims) */
    CL _Atomic uint64_t pclaim; /* token of the handle whose message is half written, 0 = none */
    _Atomic uint32_t pclaim_pid;
    _Atomic uint32_t pclaim_waiters;
    _Atomic uint64_t pclaim_start;
    _Atomic uint64_t pclaim_beat; /* CLOCK_MONOTONIC ns of the claimant's last attempt or wait */

    CL _Atomic uint32_t unfinished; /* JoinableQueue tasks (futex word) */
    _Atomic uint32_t join_waiters;
};

_Static_assert(sizeof(struct ring_hdr) <= HDR_SIZE, "header must fit its page");

struct rec {
    uint32_t len, flags;
    uint64_t total;
};

typedef struct {
    PyObject_HEAD
    struct ring_hdr *hdr;
    unsigned char *data;
    size_t map_size;
    uint64_t cap, frag_max;
    double spin; /* seconds */
    PyObject *url;
    _Atomic long calls;    /* calls in flight on this handle (each may release the GIL) */
    _Atomic int closing;   /* closed by this process: interrupt() / unmap() */
    int unmap_pending;     /* unmap when the last call, view and loan are gone */
    _Atomic int unmapped;  /* exactly one ring_unmap_now does the munmap */
    Py_ssize_t exports;    /* live views/loans (GIL-protected) */
    int slot;              /* index in the SIGBUS table, -1 if none */
    unsigned fork_gen;     /* fork generation this handle's per-process state belongs to */
    uint64_t token;        /* this handle's claim token: pid << 32 | serial */
    uint32_t pid;
    uint64_t start;        /* this process's start time (clock ticks), 0 = unknown */
    PyObject *partial;     /* bytes of the claimed message reassembled so far (under cons_lock) */
    uint64_t filled, ptotal;
    PyObject *pdata;       /* the message a try_send left half written (producer claim) */
    uint64_t pdone;        /* bytes of it already published */
    uint64_t fail_head;    /* head seen by the last try_send that found no room */
    int fail_valid;
} Ring;

/* exceptions, replaced by kipc's classes through _setup() */
static PyObject *E_Timeout, *E_WouldBlock, *E_Closed, *E_Bad;
static PyObject *FOREVER;           /* kipc._base's Deadline(None): the hot path compares identity */
static PyObject *S_end, *S_timeout; /* interned attribute names of a Deadline */
static unsigned fork_gen;           /* bumped in a forked child (pthread_atfork) */
static uint32_t token_serial;

enum { OK = 0, R_TIMEOUT = 1, R_CLOSED = 2, R_BROKEN = 3, R_LOCAL = 4, R_EMPTY = 5, R_ERR = -1 };
#define CLOSED_BROKEN 2u /* `closed` value: a peer found the object truncated */

/* ------------------------------------------------------------------------- */
/* truncation by a peer: the SIGBUS table (see THEORY: crash cases) */

#define RING_SLOTS 1024
static _Atomic uintptr_t slot_base[RING_SLOTS]; /* 0 = free */
static size_t slot_size[RING_SLOTS];
static _Atomic uintptr_t slot_broken[RING_SLOTS]; /* lowest replaced address, 0 = intact */
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

static int slot_register(void *base, size_t size)
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

static inline int is_broken(Ring *r) { return r->slot >= 0 && atomic_load_explicit(&slot_broken[r->slot], memory_order_relaxed) != 0; }

static inline double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint32_t *lo32(_Atomic uint64_t *p) { return (uint32_t *)p; }

static inline uint64_t rec_size(uint64_t len) { return REC_HDR + ((len + 15u) & ~(uint64_t)15u); }

static void futex_wake_all(void *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
/* ------------------------------------------------------------------------- */
/* processes: start time and liveness (claims of a dead consumer are repaired) */

/* State letter and start time (clock ticks since boot) of /proc/PID/stat; -1 if it is gone. */
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
    for (int i = 0; i < 19 && p; i++) { /* field 3 (state) -> field 22 (starttime) */
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    *start = p ? strtoull(p, NULL, 10) : 0;
    return 0;
}

/* Is process `pid` that started at `start` (0 = unknown) still running (zombies do not count)? */
static int proc_alive(uint32_t pid, uint64_t start)
{
    if (pid == 0)
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

static void atfork_child(void) { fork_gen++; }

/* ------------------------------------------------------------------------- */
/* errors */

static void closed_here(Ring *r, const char *op)
{
    PyErr_Format(E_Closed, "%s on %S: closed by this process", op, r->url ? r->url : Py_None);
}

/* The deadline argument: FOREVER or None (forever), a float (absolute CLOCK_MONOTONIC
 * seconds), or a kipc Deadline (its .end). */
static int get_deadline(PyObject *d, double *end)
{
    if (d == FOREVER || d == Py_None) {
        *end = INFINITY;
        return 0;
    }
    if (PyFloat_CheckExact(d)) {
        *end = PyFloat_AS_DOUBLE(d);
        return 0;
    }
    PyObject *e = PyObject_GetAttr(d, S_end);
    if (!e)
        return -1;
    *end = PyFloat_AsDouble(e);
    Py_DECREF(e);
    return *end == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* Raise the exception for state `rc` of operation `op`; `dl` is the caller's deadline
 * argument (its .timeout names the timeout; 0 means WouldBlock). */
static int raise_state(Ring *r, int rc, const char *op, PyObject *dl)
{
    if (rc == R_TIMEOUT) {
        double timeout = -1.0; /* unknown (a bare float deadline) */
        if (dl && dl != FOREVER && dl != Py_None && !PyFloat_Check(dl)) {
            PyObject *t = PyObject_GetAttr(dl, S_timeout);
            if (t && t != Py_None)
                timeout = PyFloat_AsDouble(t);
            Py_XDECREF(t);
            if (PyErr_Occurred()) {
                PyErr_Clear();
                timeout = -1.0;
            }
        }
        if (timeout == 0.0) {
            PyErr_Format(E_WouldBlock, "%s on %S would block (timeout=0)", op, r->url);
        } else if (timeout > 0) {
            char secs[32]; /* PyErr_Format has no %g */
            snprintf(secs, sizeof secs, "%g", timeout);
            PyErr_Format(E_Timeout, "%s on %S timed out after %s s", op, r->url, secs);
        } else {
            PyErr_Format(E_Timeout, "%s on %S timed out", op, r->url);
        }
    } else if (rc == R_LOCAL) {
        closed_here(r, op);
    } else if (rc == R_BROKEN || (rc == R_CLOSED && atomic_load(&r->hdr->closed) == CLOSED_BROKEN)) {
        if (is_broken(r) && atomic_load(&slot_broken[r->slot]) >= (uintptr_t)r->hdr + HDR_SIZE) {
            /* our header page is still the shared one: tell the other peers, wake them */
            atomic_store(&r->hdr->closed, CLOSED_BROKEN);
            futex_wake_all(lo32(&r->hdr->tail));
            futex_wake_all(lo32(&r->hdr->head));
            futex_wake_all(lo32(&r->hdr->claim));
            futex_wake_all(&r->hdr->unfinished);
        }
        PyErr_Format(E_Bad, "%s on %S: its shared memory object was truncated by another process or "
                     "/dev/shm ran out of space (the ring is unusable)", op, r->url);
    } else if (rc == R_CLOSED) {
        PyErr_Format(E_Closed, "%s on %S: the channel was closed by its creator", op, r->url);
    }
    return -1;
}

/* ------------------------------------------------------------------------- */
/* in-flight calls and the mapping (see THEORY: close from any thread) */

static void ring_unmap_now(Ring *r);

/* In a forked child: the parent's in-flight calls and claim are not ours. */
static void after_fork(Ring *r)
{
    r->fork_gen = fork_gen;
    atomic_store(&r->calls, 0);
    Py_CLEAR(r->partial); /* a copy of the parent's claimed partial: the parent's to finish */
    Py_CLEAR(r->pdata);   /* likewise a half-written message */
    r->filled = r->ptotal = 0;
    r->pid = (uint32_t)getpid();
    r->start = 0;
    r->token = ((uint64_t)r->pid << 32) | ++token_serial;
    r->fail_valid = 0;
}

static inline void leave(Ring *r)
{
    if (atomic_fetch_sub(&r->calls, 1) == 1 && r->unmap_pending && r->exports == 0)
        ring_unmap_now(r); /* the last one out unmaps */
}

/* Every call that touches the mapping brackets itself with enter/leave (GIL held at both). */
static inline int enter(Ring *r, const char *op)
{
    if (r->fork_gen != fork_gen)
        after_fork(r);
    atomic_fetch_add(&r->calls, 1); /* seq_cst: before the closing load (pairs with unmap()) */
    if (atomic_load_explicit(&r->closing, memory_order_relaxed) || r->hdr == NULL) {
        leave(r);
        closed_here(r, op);
        return -1;
    }
    /* load first: if the header page vanished, this load is what marks the slot broken */
    uint32_t closed = atomic_load_explicit(&r->hdr->closed, memory_order_relaxed);
    if (closed == CLOSED_BROKEN || is_broken(r)) {
        raise_state(r, R_BROKEN, op, NULL);
        leave(r);
        return -1;
    }
    return 0;
}

static inline int closing(Ring *r) { return atomic_load_explicit(&r->closing, memory_order_relaxed); }

/* ------------------------------------------------------------------------- */
/* waiting */

/* Wait (GIL released) until the 32-bit word differs from `expect`, the ring is
 * closed (by its creator or in this process), or `deadline` passes. Returns OK
 * (re-check), R_TIMEOUT, R_LOCAL (closed by this process), R_BROKEN, or R_ERR with
 * a Python exception (a signal handler raised). Also returns OK after one sleep
 * slice so callers can run periodic checks. Holds no lock. */
static int wait_word(Ring *r, uint32_t *word, uint32_t expect, _Atomic uint32_t *waiters, double deadline)
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
    PyThreadState *ts = PyEval_SaveThread();
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
    PyEval_RestoreThread(ts);
    if (rc == OK && (err == EINTR || err == ETIMEDOUT) && PyErr_CheckSignals() < 0)
        return R_ERR;
    if (rc == OK && is_broken(r))
        return R_BROKEN;
    if (rc == OK && closing(r))
        return R_LOCAL;
    return rc;
}

/* ------------------------------------------------------------------------- */
/* locks and repair */

static void repair_prod(struct ring_hdr *h)
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

static void repair_cons(struct ring_hdr *h)
{
    if (atomic_load_explicit(&h->cj_valid, memory_order_acquire)) {
        atomic_store_explicit(&h->msgs_out, h->cj_msgs, memory_order_relaxed);
        atomic_store_explicit(&h->head, h->cj_head, memory_order_release);
        atomic_store_explicit(&h->cj_valid, 0, memory_order_release);
    }
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake_all(lo32(&h->head));
}

/* Take a ring lock before `deadline` (nb: one try; EBUSY -> R_EMPTY). The wait is
 * pthread_mutex_clocklock in SLICE steps: signals and a local close get through. */
static int lock_ring(Ring *r, int prod, double deadline, int nb)
{
    struct ring_hdr *h = r->hdr;
    pthread_mutex_t *m = prod ? &h->prod_lock : &h->cons_lock;
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
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &abs);
        Py_END_ALLOW_THREADS
        if (rc == ETIMEDOUT) {
            if (PyErr_CheckSignals() < 0)
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
    if (rc == EDEADLK) {
        PyErr_Format(PyExc_RuntimeError,
                     "%S: this thread still holds an unreleased %s; release it first", r->url,
                     prod ? "loan" : "received view");
        return R_ERR;
    }
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return R_ERR;
    }
    if (is_broken(r)) { /* the lock word may have been a zero page: release what we took */
        pthread_mutex_unlock(m);
        return R_BROKEN;
    }
    if (closing(r) && !nb) { /* closed while we waited for the lock */
        pthread_mutex_unlock(m);
        return R_LOCAL;
    }
    return OK;
}

static void unlock_ring(Ring *r, int prod)
{
    pthread_mutex_unlock(prod ? &r->hdr->prod_lock : &r->hdr->cons_lock);
}

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void frag_abort(struct ring_hdr *h)
{
    atomic_store_explicit(&h->frag_active, 0, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    futex_wake_all(lo32(&h->tail));
}

/* Is the producer claim held by a live process that made an attempt within PCLAIM_STALE_NS? */
static int pclaim_live(struct ring_hdr *h)
{
    uint64_t beat = atomic_load(&h->pclaim_beat), now = mono_ns();
    if (now > beat && now - beat > PCLAIM_STALE_NS)
        return 0;
    return proc_alive(atomic_load(&h->pclaim_pid), atomic_load(&h->pclaim_start));
}

/* Under prod_lock: end the producer claim `token`. abort: its message is abandoned
 * (consumers drop what they reassembled); else it was completed. */
static void pclaim_end(struct ring_hdr *h, uint64_t token, int abort)
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
static void probe_producer(struct ring_hdr *h)
{
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

/* ------------------------------------------------------------------------- */
/* producer side */

static void publish(struct ring_hdr *h, uint64_t new_tail, uint64_t new_msgs)
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

/* Would a record of `need` bytes (and an item slot, if max_items) fit at `tail`? Sets *pad.
 * Also used without the lock as a hint: tail and head may then be from different moments
 * (clamped here); the producer re-checks under its lock before writing. */
static inline int room(Ring *r, uint64_t tail, uint64_t head, uint64_t need, uint64_t max_items, uint64_t *pad)
{
    struct ring_hdr *h = r->hdr;
    if (max_items) {
        uint64_t in = atomic_load_explicit(&h->msgs_in, memory_order_relaxed);
        uint64_t out = atomic_load_explicit(&h->msgs_out, memory_order_acquire);
        if ((int64_t)(in - out) >= (int64_t)max_items)
            return 0;
    }
    uint64_t used = tail - head;
    if ((int64_t)used < 0)
        used = 0; /* head read after a newer publish and consume than tail: no less room than that */
    uint64_t off = tail % r->cap;
    *pad = off + need > r->cap ? r->cap - off : 0;
    return used <= r->cap && r->cap - used >= *pad + need;
}

/* Write the pad (if any) and a record header at tail; returns the payload pointer. */
static unsigned char *place(Ring *r, uint64_t pad, uint64_t len, uint32_t flags, uint64_t total)
{
    uint64_t tail = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed);
    uint64_t off = tail % r->cap;
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

typedef struct {
    Py_buffer *parts;
    int n;
    PyObject *obj; /* the data object of a single-part message (producer claims), or NULL */
} gather_t;

/* Copy bytes [from, from+len) of the concatenated parts to dst. */
static void gather(unsigned char *dst, gather_t *g, uint64_t from, uint64_t len)
{
    for (int i = 0; i < g->n && len; i++) {
        uint64_t plen = (uint64_t)g->parts[i].len;
        if (from >= plen) {
            from -= plen;
            continue;
        }
        uint64_t take = plen - from < len ? plen - from : len;
        memcpy(dst, (char *)g->parts[i].buf + from, take);
        dst += take;
        len -= take;
        from = 0;
    }
}

static void gather_gil(unsigned char *dst, gather_t *g, uint64_t from, uint64_t len)
{
    if (len >= BIG_COPY) {
        Py_BEGIN_ALLOW_THREADS
        gather(dst, g, from, len);
        Py_END_ALLOW_THREADS
    } else {
        gather(dst, g, from, len);
    }
}

/* Wait, holding no lock, until a record of `need` bytes fits (and an item slot is free);
 * then take prod_lock and re-check. Returns OK with the lock held and *pad set, or a
 * state (nb: R_EMPTY when there is no room now or the lock is busy). */
static int reserve_locked(Ring *r, uint64_t need, uint64_t max_items, double deadline, int nb, uint64_t *pad)
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
            int rc = wait_word(r, lo32(&h->pclaim), (uint32_t)pc, &h->pclaim_waiters,
                               until < deadline ? until : deadline);
            if (rc != OK && !(rc == R_TIMEOUT && until < deadline))
                return rc;
            continue;
        }
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        if (room(r, tail, head, need, max_items, pad)) {
            int rc = lock_ring(r, 1, deadline, nb);
            if (rc != OK)
                return rc;
            pc = atomic_load(&h->pclaim);
            if (pc && (pc == r->token || !pclaim_live(h))) {
                /* our own half-written message (another message now), or a dead or stale
                 * claimant's: abandoned */
                if (pc != r->token)
                    atomic_fetch_add(&h->repairs, 1);
                pclaim_end(h, pc, 1);
                if (pc == r->token)
                    Py_CLEAR(r->pdata);
            } else if (pc) {
                unlock_ring(r, 1); /* claimed meanwhile: wait for it above */
                continue;
            }
            tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
            head = atomic_load_explicit(&h->head, memory_order_acquire);
            if (room(r, tail, head, need, max_items, pad) && !atomic_load(&h->closed))
                return OK;
            unlock_ring(r, 1); /* another producer took the room meanwhile: look again */
            continue;
        }
        if (nb) {
            if (!r->fail_valid) { /* _wait("send") waits for head to move past this */
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
 * handle resumes it. g->obj is the data object. */
static int produce_frag_nb(Ring *r, gather_t *g, uint64_t total, uint64_t max_items)
{
    struct ring_hdr *h = r->hdr;
    uint64_t pad;
    int rc, resume = r->pdata == g->obj && g->obj && atomic_load(&h->pclaim) == r->token;
    if (resume) {
        rc = lock_ring(r, 1, 0.0, 1);
        if (rc != OK)
            return rc; /* busy: R_EMPTY */
        if (atomic_load(&h->pclaim) != r->token) { /* taken over (stale) meanwhile: start again */
            unlock_ring(r, 1);
            Py_CLEAR(r->pdata);
            return R_EMPTY;
        }
    } else {
        rc = reserve_locked(r, rec_size(r->frag_max), max_items, 0.0, 1, &pad);
        if (rc != OK)
            return rc;
        Py_CLEAR(r->pdata);
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
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
        head = atomic_load_explicit(&h->head, memory_order_acquire);
        if (!room(r, tail, head, rec_size(chunk), 0, &pad))
            break;
        unsigned char *dst = place(r, pad, chunk, (done == 0 ? F_FIRST : 0) | (last ? F_LAST : 0), total);
        gather_gil(dst, g, done, chunk);
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
        Py_CLEAR(r->pdata);
        r->pdone = 0;
        unlock_ring(r, 1);
        return OK;
    }
    /* no room for the next fragment now: the message stays claimed by this handle */
    r->pdone = done;
    if (!r->pdata)
        r->pdata = Py_NewRef(g->obj);
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
    r->fail_head = head; /* _wait("send") waits for head to move past this */
    r->fail_valid = 1;
    unlock_ring(r, 1);
    return R_EMPTY;
abort:
    if (resume || atomic_load(&h->pclaim) == r->token)
        pclaim_end(h, r->token, 1);
    else
        frag_abort(h);
    Py_CLEAR(r->pdata);
    unlock_ring(r, 1);
    return rc;
}

/* One message of `total` bytes from the parts. nb: a non-blocking attempt (R_EMPTY when
 * there is no room now); a fragmented one, once started, waits for the rest (THEORY). */
static int produce(Ring *r, gather_t *g, uint64_t total, double deadline, uint64_t max_items, int nb)
{
    struct ring_hdr *h = r->hdr;
    uint64_t pad;
    if (total <= r->frag_max) {
        uint64_t need = rec_size(total);
        int rc = reserve_locked(r, need, max_items, deadline, nb, &pad);
        if (rc != OK)
            return rc;
        unsigned char *dst = place(r, pad, total, F_FIRST | F_LAST, total);
        gather_gil(dst, g, 0, total);
        if (is_broken(r)) {
            unlock_ring(r, 1);
            return R_BROKEN; /* never publish a record written into vanished pages */
        }
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
        publish(h, tail + pad + need, atomic_load_explicit(&h->msgs_in, memory_order_relaxed) + 1);
        unlock_ring(r, 1);
        return OK;
    }
    if (nb)
        return produce_frag_nb(r, g, total, max_items);
    /* Fragments: wait (no lock) until the first fits, then hold prod_lock across all of
     * them, waiting for space under it (the one wait under a lock); abort (frag_active = 0)
     * on timeout, close or a signal. */
    int rc = reserve_locked(r, rec_size(r->frag_max), max_items, deadline, nb, &pad);
    if (rc != OK)
        return rc;
    if (r->pdata) /* a half-written message of ours was abandoned by reserve_locked */
        Py_CLEAR(r->pdata);
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
            uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
            uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
            if (room(r, tail, head, rec_size(chunk), 0, &pad))
                break;
            rc = wait_word(r, lo32(&h->head), (uint32_t)head, &h->prod_waiters, deadline);
            if (rc != OK)
                goto abort;
        }
        first = 0;
        unsigned char *dst = place(r, pad, chunk, (done == 0 ? F_FIRST : 0) | (last ? F_LAST : 0), total);
        gather_gil(dst, g, done, chunk);
        if (is_broken(r)) {
            rc = R_BROKEN;
            goto abort;
        }
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
        uint64_t msgs = atomic_load_explicit(&h->msgs_in, memory_order_relaxed);
        publish(h, tail + pad + rec_size(chunk), msgs + (last ? 1 : 0));
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

/* ------------------------------------------------------------------------- */
/* consumer side */

static void advance(struct ring_hdr *h, uint64_t new_head, int count)
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
static void claim_set(Ring *r)
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

static void claim_clear(struct ring_hdr *h, uint64_t token)
{
    uint64_t t = token;
    if (atomic_compare_exchange_strong(&h->claim, &t, 0) && atomic_load(&h->claim_waiters))
        futex_wake_all(lo32(&h->claim)); /* the CAS is seq_cst: the Dekker pair with the waiters */
}

static inline int foreign_claim(Ring *r, uint64_t claim) { return claim != 0 && claim != r->token; }

static int claimant_alive(struct ring_hdr *h)
{
    return proc_alive(atomic_load(&h->claim_pid), atomic_load(&h->claim_start));
}

static PyObject *RingView_new(Ring *r, unsigned char *ptr, Py_ssize_t len, uint64_t new_head);
static void RingView_drop(PyObject *v);

static void copy_out(char *dst, const unsigned char *src, size_t len)
{
    if (len >= BIG_COPY) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, src, len);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(dst, src, len);
    }
}

/* The claimed message is complete: hand it out. */
static PyObject *finish_partial(Ring *r, int want_view)
{
    PyObject *p = r->partial;
    r->partial = NULL;
    if (r->filled != r->ptotal) {
        Py_DECREF(p);
        PyErr_Format(E_Bad, "recv on %S: fragmented message of %llu bytes ended after %llu", r->url,
                     (unsigned long long)r->ptotal, (unsigned long long)r->filled);
        return NULL;
    }
    if (want_view) {
        PyObject *mv = PyMemoryView_FromObject(p);
        Py_DECREF(p);
        return mv;
    }
    return p;
}

/* With cons_lock held: take the records at head. Returns a message (cons_lock released, or
 * kept by a RingView), or NULL with *rcp = R_EMPTY (lock released: nothing deliverable now —
 * empty, mid-message, or another live consumer's claim), R_ERR (exception set) or a state. */
static PyObject *take_locked(Ring *r, int want_view, int *rcp)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
        if (foreign_claim(r, claim)) {
            if (claimant_alive(h)) {
                *rcp = R_EMPTY;
                break;
            }
            claim_clear(h, claim); /* its owner died: the rest of its message is skipped below */
            atomic_fetch_add(&h->repairs, 1);
        }
        uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        if (is_broken(r)) {
            *rcp = R_BROKEN;
            break;
        }
        if (head == tail) {
            /* Mid-message and the producer aborted (timeout) or died (repaired): drop ours. */
            if (r->partial && !atomic_load_explicit(&h->frag_active, memory_order_acquire) &&
                atomic_load_explicit(&h->tail, memory_order_acquire) == tail) {
                Py_CLEAR(r->partial);
                claim_clear(h, r->token);
            }
            *rcp = R_EMPTY;
            break;
        }
        uint64_t off = head % r->cap;
        struct rec *rec = (struct rec *)(r->data + off);
        uint32_t len = rec->len, flags = rec->flags;
        uint64_t total = rec->total;
        if (is_broken(r)) { /* the record header was on a vanished page: do not advance */
            *rcp = R_BROKEN;
            break;
        }
        if (off + REC_HDR + len > r->cap || rec_size(len) > tail - head || (flags & ~7u) ||
            ((flags & F_FIRST) && total < len)) {
            PyErr_Format(E_Bad, "recv on %S: corrupt record at offset %llu (len %u, flags 0x%x)", r->url,
                         (unsigned long long)off, len, flags);
            *rcp = R_ERR;
            break;
        }
        uint64_t next = head + rec_size(len);
        if (flags & F_PAD) {
            advance(h, next, 0);
            continue;
        }
        if (flags & F_FIRST) {
            if (r->partial) { /* an aborted or orphaned message: never delivered */
                Py_CLEAR(r->partial);
                claim_clear(h, r->token);
            }
        } else if (!r->partial) {
            advance(h, next, (flags & F_LAST) != 0); /* the rest of a message a dead consumer claimed */
            continue;
        }
        unsigned char *src = r->data + off + REC_HDR;
        if ((flags & (F_FIRST | F_LAST)) == (F_FIRST | F_LAST)) {
            if (want_view == 1 || (want_view == 2 && len >= VIEW_MIN)) {
                /* a memoryview over a RingView: keeps cons_lock (and the mapping) until released */
                PyObject *v = RingView_new(r, src, len, next), *mv = NULL;
                if (v && !(mv = PyMemoryView_FromObject(v)))
                    RingView_drop(v); /* unclaimed, not consumed */
                Py_XDECREF(v);
                if (!mv)
                    *rcp = R_ERR; /* the lock was released */
                return mv;
            }
            PyObject *out = PyBytes_FromStringAndSize(NULL, len);
            if (!out) {
                *rcp = R_ERR;
                break;
            }
            copy_out(PyBytes_AS_STRING(out), src, len);
            if (is_broken(r)) {
                Py_DECREF(out);
                *rcp = R_BROKEN;
                break;
            }
            advance(h, next, 1);
            unlock_ring(r, 0);
            return out;
        }
        if (flags & F_FIRST) {
            if (total > (uint64_t)PY_SSIZE_T_MAX - 64 ||
                !(r->partial = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total))) {
                *rcp = R_ERR; /* message left in place: nothing lost */
                break;
            }
            r->ptotal = total;
            r->filled = 0;
            claim_set(r);
        }
        if (r->filled + len > r->ptotal) {
            Py_CLEAR(r->partial);
            claim_clear(h, r->token);
            advance(h, next, (flags & F_LAST) != 0);
            continue;
        }
        copy_out(PyBytes_AS_STRING(r->partial) + r->filled, src, len);
        if (is_broken(r)) {
            *rcp = R_BROKEN;
            break;
        }
        r->filled += len;
        if (flags & F_LAST) {
            advance(h, next, 1);
            claim_clear(h, r->token);
            unlock_ring(r, 0);
            PyObject *out = finish_partial(r, want_view);
            if (!out)
                *rcp = R_ERR;
            return out;
        }
        advance(h, next, 0);
    }
    unlock_ring(r, 0);
    return NULL;
}

/* Receive one message. Waits (nb: never) holding no lock: for data, for another consumer's
 * claim to end, or (mid-message) for the rest; takes cons_lock only to take records.
 * Returns the message, or NULL with *rcp = R_EMPTY (nb: nothing now), R_ERR or a state. */
static PyObject *consume(Ring *r, double deadline, int want_view, int nb, int *rcp)
{
    struct ring_hdr *h = r->hdr;
    for (;;) {
        if (is_broken(r)) {
            *rcp = R_BROKEN;
            return NULL;
        }
        uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        int rc;
        if (foreign_claim(r, claim) && claimant_alive(h)) {
            /* another consumer is mid-message: its fragments are at head */
            if (nb) {
                *rcp = R_EMPTY;
                return NULL;
            }
            double until = mono() + PROBE; /* then probe the claimant's liveness again */
            rc = wait_word(r, lo32(&h->claim), (uint32_t)claim, &h->claim_waiters, until < deadline ? until : deadline);
            if (rc == R_TIMEOUT && until < deadline)
                continue;
            if (rc != OK) {
                *rcp = rc;
                return NULL;
            }
            continue;
        }
        if (head == tail) {
            if (r->partial) {
                if (atomic_load_explicit(&h->frag_active, memory_order_acquire)) {
                    if (nb) {
                        *rcp = R_EMPTY;
                        return NULL;
                    }
                    double until = mono() + PROBE;
                    rc = wait_word(r, lo32(&h->tail), (uint32_t)tail, &h->cons_waiters,
                                   until < deadline ? until : deadline);
                    if (rc == R_TIMEOUT && until < deadline) {
                        probe_producer(h); /* EBUSY while the producer lives; repairs a dead one */
                        continue;
                    }
                    if (rc != OK) {
                        if (rc == R_TIMEOUT) /* a short timeout probes too: a dead producer's message */
                            probe_producer(h); /* is then dropped by the next call */
                        *rcp = rc;
                        return NULL;
                    }
                    continue;
                }
                /* the producer aborted or died: take_locked drops the partial */
            } else {
                if (atomic_load_explicit(&h->closed, memory_order_acquire)) {
                    *rcp = R_CLOSED;
                    return NULL;
                }
                if (nb) {
                    *rcp = R_EMPTY;
                    return NULL;
                }
                rc = wait_word(r, lo32(&h->tail), (uint32_t)tail, &h->cons_waiters, deadline);
                if (rc != OK) {
                    *rcp = rc;
                    return NULL;
                }
                continue;
            }
        }
        rc = lock_ring(r, 0, deadline, nb);
        if (rc != OK) {
            *rcp = rc;
            return NULL;
        }
        PyObject *got = take_locked(r, want_view, &rc);
        if (got || rc != R_EMPTY) {
            *rcp = rc;
            return got;
        }
        /* nothing deliverable after all: look again (waits or, nb, returns R_EMPTY) */
    }
}

/* _wait("recv"): block, consuming nothing and holding no lock, until a recv attempt may
 * succeed (data at head that is not another live consumer's claim, and cons_lock free),
 * the deadline passes, or the handle is closed. Returns OK or R_ERR (exception). */
static int wait_recv(Ring *r, double deadline)
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

/* _wait("send"): until some space was freed since the last failed try_send (or the ring is
 * not full) and prod_lock is free, the deadline passes, or the handle is closed. */
static int wait_send(Ring *r, double deadline)
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
            int rc = wait_word(r, lo32(&h->pclaim), (uint32_t)pc, &h->pclaim_waiters,
                               until < deadline ? until : deadline);
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

/* ------------------------------------------------------------------------- */
/* RingView: a read-only buffer into the ring; releasing it consumes the message */

typedef struct {
    PyObject_HEAD
    Ring *ring;
    unsigned char *ptr;
    Py_ssize_t len;
    uint64_t new_head;
    Py_ssize_t exports;
    int done;
} RingView;

static PyTypeObject RingViewType;

static void ring_export_done(Ring *r);

static PyObject *RingView_new(Ring *r, unsigned char *ptr, Py_ssize_t len, uint64_t new_head)
{
    RingView *v = PyObject_New(RingView, &RingViewType);
    if (!v) {
        unlock_ring(r, 0);
        return NULL;
    }
    Py_INCREF(r);
    v->ring = r;
    v->ptr = ptr;
    v->len = len;
    v->new_head = new_head;
    v->exports = 0;
    v->done = 0;
    r->exports++; /* the mapping stays until the view is released, even after close() */
    return (PyObject *)v;
}

static void RingView_finish(RingView *v)
{
    if (v->done)
        return;
    v->done = 1;
    advance(v->ring->hdr, v->new_head, 1);
    unlock_ring(v->ring, 0);
    ring_export_done(v->ring);
}

/* Give a view up without consuming its message (the memoryview around it failed). */
static void RingView_drop(PyObject *o)
{
    RingView *v = (RingView *)o;
    if (v->done)
        return;
    v->done = 1;
    unlock_ring(v->ring, 0);
    ring_export_done(v->ring);
}

static int RingView_getbuffer(RingView *v, Py_buffer *view, int flags)
{
    if (v->done) {
        PyErr_SetString(PyExc_BufferError, "this ring view was already released");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)v, v->ptr, v->len, 1, flags) < 0)
        return -1;
    v->exports++;
    return 0;
}

static void RingView_releasebuffer(RingView *v, Py_buffer *view)
{
    if (--v->exports == 0)
        RingView_finish(v);
}

static void RingView_dealloc(RingView *v)
{
    RingView_finish(v);
    Py_DECREF(v->ring);
    PyObject_Free(v);
}

static PyBufferProcs RingView_as_buffer = {(getbufferproc)RingView_getbuffer, (releasebufferproc)RingView_releasebuffer};

static PyTypeObject RingViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._ring.RingView",
    .tp_basicsize = sizeof(RingView),
    .tp_dealloc = (destructor)RingView_dealloc,
    .tp_as_buffer = &RingView_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A received message in place; releasing the last buffer export consumes it.",
};

/* ------------------------------------------------------------------------- */
/* RingLoan: a writable reservation; commit(n) publishes n bytes */

typedef struct {
    PyObject_HEAD
    Ring *ring;
    unsigned char *ptr;
    Py_ssize_t size;
    uint64_t pad;
    Py_ssize_t exports;
    int done;
} RingLoan;

static PyTypeObject RingLoanType;

static void RingLoan_end(RingLoan *l)
{
    l->done = 1;
    unlock_ring(l->ring, 1);
    ring_export_done(l->ring);
}

static PyObject *RingLoan_commit(RingLoan *l, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (l->done) {
        PyErr_SetString(PyExc_RuntimeError, "loan already committed or aborted");
        return NULL;
    }
    if (n < 0 || n > l->size) {
        PyErr_Format(PyExc_ValueError, "commit(%zd): the loan is %zd bytes", n, l->size);
        return NULL;
    }
    if (l->exports) {
        PyErr_SetString(PyExc_BufferError, "release every view of the loan before committing");
        return NULL;
    }
    Ring *r = l->ring;
    if (closing(r)) { /* the handle was closed while the loan was open: publish nothing */
        RingLoan_end(l);
        closed_here(r, "commit");
        return NULL;
    }
    struct ring_hdr *h = r->hdr;
    struct rec *rec = (struct rec *)(l->ptr - REC_HDR);
    rec->len = (uint32_t)n;
    if (is_broken(r)) {
        raise_state(r, R_BROKEN, "commit", NULL);
        RingLoan_end(l);
        return NULL;
    }
    rec->total = (uint64_t)n;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    publish(h, tail + l->pad + rec_size((uint64_t)n), atomic_load_explicit(&h->msgs_in, memory_order_relaxed) + 1);
    RingLoan_end(l);
    Py_RETURN_NONE;
}

static PyObject *RingLoan_abort(RingLoan *l, PyObject *unused)
{
    if (!l->done) {
        if (l->exports) {
            PyErr_SetString(PyExc_BufferError, "release every view of the loan before aborting");
            return NULL;
        }
        RingLoan_end(l);
    }
    Py_RETURN_NONE;
}

static int RingLoan_getbuffer(RingLoan *l, Py_buffer *view, int flags)
{
    if (l->done) {
        PyErr_SetString(PyExc_BufferError, "this loan was already committed or aborted");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)l, l->ptr, l->size, 0, flags) < 0)
        return -1;
    l->exports++;
    return 0;
}

static void RingLoan_releasebuffer(RingLoan *l, Py_buffer *view) { l->exports--; }

static void RingLoan_dealloc(RingLoan *l)
{
    if (!l->done)
        RingLoan_end(l); /* never committed: nothing published */
    Py_DECREF(l->ring);
    PyObject_Free(l);
}

static PyMethodDef RingLoan_methods[] = {
    {"commit", (PyCFunction)RingLoan_commit, METH_O, "commit(nbytes): publish the first nbytes as one message"},
    {"abort", (PyCFunction)RingLoan_abort, METH_NOARGS, "abort(): give the space back, publish nothing"},
    {NULL},
};

static PyBufferProcs RingLoan_as_buffer = {(getbufferproc)RingLoan_getbuffer, (releasebufferproc)RingLoan_releasebuffer};

static PyTypeObject RingLoanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._ring.RingLoan",
    .tp_basicsize = sizeof(RingLoan),
    .tp_dealloc = (destructor)RingLoan_dealloc,
    .tp_as_buffer = &RingLoan_as_buffer,
    .tp_methods = RingLoan_methods,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writable space reserved in the ring (holds the producer lock until commit/abort).",
};

/* ------------------------------------------------------------------------- */
/* Ring */

static void ring_unmap_now(Ring *r)
{
    if (r->hdr && !atomic_exchange(&r->unmapped, 1)) {
        if (r->partial) { /* closed mid-message: drop the claim (the rest is skipped, THEORY) */
            Py_CLEAR(r->partial);
            claim_clear(r->hdr, r->token);
        }
        if (r->pdata) { /* a half-written message: make the claim stale, the next peer ends it */
            Py_CLEAR(r->pdata);
            if (atomic_load(&r->hdr->pclaim) == r->token)
                atomic_store(&r->hdr->pclaim_beat, 0);
        }
        if (r->slot >= 0)
            atomic_store(&slot_base[r->slot], 0); /* before munmap: the handler must not claim a reused range */
        r->slot = -1;
        munmap(r->hdr, r->map_size);
        r->hdr = NULL;
        r->data = NULL;
    }
}

static void ring_export_done(Ring *r)
{
    if (--r->exports == 0 && r->unmap_pending && atomic_load(&r->calls) == 0)
        ring_unmap_now(r);
}

static int Ring_init(Ring *r, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"fd", "url", "create", "capacity", "owner_pid", "owner_start", "spin", NULL};
    int fd, create;
    unsigned long long capacity, owner_start;
    unsigned int owner_pid;
    double spin;
    PyObject *url;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iUpKIKd:Ring", kwlist, &fd, &url, &create, &capacity, &owner_pid,
                                     &owner_start, &spin))
        return -1;
    if (r->hdr) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    Py_INCREF(url);
    Py_XSETREF(r->url, url);
    r->slot = -1;
    r->spin = spin < 0 ? 0 : spin;
    r->fork_gen = fork_gen;
    r->pid = (uint32_t)getpid();
    r->start = owner_pid == r->pid ? owner_start : 0;
    r->token = ((uint64_t)r->pid << 32) | ++token_serial;
    uint64_t start = 0; /* TEST HOOK (see THEORY: counters and wrap) */
    const char *start_env = create ? getenv("KIPC_RING_TEST_START") : NULL;
    if (start_env && *start_env) {
        char *end;
        errno = 0;
        start = strtoull(start_env, &end, 0);
        if (errno || *end) {
            PyErr_Format(PyExc_ValueError, "KIPC_RING_TEST_START=%s is not an integer", start_env);
            return -1;
        }
    }
    struct stat st;
    if (create) {
        if (capacity < HDR_SIZE || (capacity & (capacity - 1)) || capacity > (1ULL << 40)) {
            PyErr_Format(PyExc_ValueError, "capacity %llu must be a power of two in [%u, 2**40]", capacity,
                         HDR_SIZE);
            return -1;
        }
        if (ftruncate(fd, (off_t)(HDR_SIZE + capacity)) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    if (fstat(fd, &st) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)(2 * HDR_SIZE) || st.st_size % HDR_SIZE) {
        PyErr_Format(E_Bad, "ring %S: object of %lld bytes is not a kipc ring (truncated or foreign)", url,
                     (long long)st.st_size);
        return -1;
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct ring_hdr *h = base;
    if (create) {
        memset(h, 0, sizeof *h);
        h->version = RING_VERSION;
        h->hdr_size = HDR_SIZE;
        h->capacity = capacity;
        h->total_size = (uint64_t)st.st_size;
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
        if (e1 || e2) {
            munmap(base, (size_t)st.st_size);
            errno = e1 ? e1 : e2;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        atomic_store_explicit(&h->magic, RING_MAGIC, memory_order_release); /* published last */
    } else {
        const char *why = NULL;
        if (atomic_load_explicit(&h->magic, memory_order_acquire) != RING_MAGIC)
            why = "bad magic";
        else if (h->version != RING_VERSION)
            why = "unsupported version";
        else if (h->hdr_size != HDR_SIZE || h->total_size != (uint64_t)st.st_size ||
                 h->capacity != (uint64_t)st.st_size - HDR_SIZE || (h->capacity & (h->capacity - 1)))
            why = "sizes in the header do not match the object";
        else if (h->owner_uid != (uint32_t)geteuid())
            why = "header names another owner uid";
        if (why) {
            munmap(base, (size_t)st.st_size);
            PyErr_Format(E_Bad, "ring %S: %s (not a kipc ring v%u, or corrupted)", url, why, RING_VERSION);
            return -1;
        }
    }
    r->hdr = h;
    r->data = (unsigned char *)base + HDR_SIZE;
    r->map_size = (size_t)st.st_size;
    r->cap = h->capacity;
    r->frag_max = (r->cap / 2 - REC_HDR) & ~(uint64_t)15u;
    r->slot = slot_register(base, (size_t)st.st_size);
    return 0;
}

static void Ring_dealloc(Ring *r)
{
    if (r->fork_gen != fork_gen)
        after_fork(r);
    ring_unmap_now(r); /* no call can be in flight: each holds a reference */
    Py_CLEAR(r->partial);
    Py_CLEAR(r->pdata);
    Py_XDECREF(r->url);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

/* knobs (a dict or None) -> view mode; -1 on error */
static int knob_view(PyObject *knobs)
{
    if (knobs == NULL || knobs == Py_None)
        return 0;
    if (!PyDict_Check(knobs)) {
        PyErr_SetString(PyExc_TypeError, "knobs must be a dict");
        return -1;
    }
    if (PyDict_GET_SIZE(knobs) == 0)
        return 0;
    PyObject *v = PyDict_GetItemString(knobs, "view");
    return v ? PyObject_IsTrue(v) : 0;
}

static int get_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* A buffer for one part; bytes skip the buffer protocol (b->obj stays NULL). */
static inline int get_part(PyObject *obj, Py_buffer *b)
{
    if (PyBytes_CheckExact(obj)) {
        b->buf = PyBytes_AS_STRING(obj);
        b->len = PyBytes_GET_SIZE(obj);
        b->obj = NULL;
        return 0;
    }
    return PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS);
}

static inline void release_part(Py_buffer *b)
{
    if (b->obj)
        PyBuffer_Release(b);
}

/* send(data, deadline=FOREVER, knobs=None, max_items=0): the blocking send (the base's
 * _send_blocking). deadline: FOREVER/None, a Deadline (its .end) or absolute seconds. */
static PyObject *Ring_send(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "send(data, deadline=FOREVER, knobs=None, max_items=0)");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    uint64_t max_items = 0;
    if ((dl && dl != FOREVER && get_deadline(dl, &deadline) < 0) || (nargs > 3 && get_u64(args[3], &max_items) < 0))
        return NULL;
    if (enter(r, "send") < 0)
        return NULL;
    Py_buffer b;
    if (get_part(args[0], &b) < 0) {
        leave(r);
        return NULL;
    }
    gather_t g = {&b, 1};
    int rc = produce(r, &g, (uint64_t)b.len, deadline, max_items, 0);
    release_part(&b);
    if (rc != OK && rc != R_ERR)
        raise_state(r, rc, "send", dl);
    leave(r);
    if (rc != OK)
        return NULL;
    Py_RETURN_NONE;
}

/* try_send(data, knobs=None, max_items=0) -> bool: False when there is no room now. */
static PyObject *Ring_try_send(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "try_send(data, knobs=None, max_items=0)");
        return NULL;
    }
    uint64_t max_items = 0;
    if (nargs > 2 && get_u64(args[2], &max_items) < 0)
        return NULL;
    if (enter(r, "send") < 0)
        return NULL;
    Py_buffer b;
    if (get_part(args[0], &b) < 0) {
        leave(r);
        return NULL;
    }
    gather_t g = {&b, 1, args[0]};
    int rc = produce(r, &g, (uint64_t)b.len, 0.0, max_items, 1);
    release_part(&b);
    if (rc != OK && rc != R_ERR && rc != R_EMPTY)
        raise_state(r, rc, "send", NULL);
    leave(r);
    if (rc == OK)
        Py_RETURN_TRUE;
    if (rc == R_EMPTY)
        Py_RETURN_FALSE;
    return NULL;
}

/* sendv(parts, deadline=FOREVER, max_items=0): the parts as one message */
static PyObject *Ring_sendv(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "sendv(parts, deadline=FOREVER, max_items=0)");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    uint64_t max_items = 0;
    if ((dl && dl != FOREVER && get_deadline(dl, &deadline) < 0) || (nargs > 2 && get_u64(args[2], &max_items) < 0))
        return NULL;
    PyObject *fast = PySequence_Fast(args[0], "sendv: parts must be a sequence of buffers");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > 64) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "sendv: 1 to 64 parts");
        return NULL;
    }
    if (enter(r, "send") < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    Py_buffer bufs[64];
    uint64_t total = 0;
    int got = 0, rc = R_ERR;
    for (; got < n; got++) {
        if (get_part(PySequence_Fast_GET_ITEM(fast, got), &bufs[got]) < 0)
            goto done;
        total += (uint64_t)bufs[got].len;
    }
    gather_t g = {bufs, (int)n};
    rc = produce(r, &g, total, deadline, max_items, 0);
    if (rc != OK && rc != R_ERR)
        raise_state(r, rc, "send", dl);
done:
    for (int i = 0; i < got; i++)
        release_part(&bufs[i]);
    Py_DECREF(fast);
    leave(r);
    if (rc != OK)
        return NULL;
    Py_RETURN_NONE;
}

/* recv(deadline=FOREVER, knobs=None, view=0): the blocking recv (the base's _recv_blocking).
 * knobs["view"] true or view=1: a RingView; view=2: a RingView only for messages >= 16 KiB. */
static PyObject *Ring_recv(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "recv(deadline=FOREVER, knobs=None, view=0)");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 0 ? args[0] : NULL;
    if (dl && dl != FOREVER && get_deadline(dl, &deadline) < 0)
        return NULL;
    int view = nargs > 1 ? knob_view(args[1]) : 0;
    if (view < 0)
        return NULL;
    if (nargs > 2) {
        long v = PyLong_AsLong(args[2]);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (v)
            view = v == 2 ? 2 : 1;
    }
    if (enter(r, "recv") < 0)
        return NULL;
    int rc = OK;
    PyObject *got = consume(r, deadline, view, 0, &rc);
    if (!got && rc != R_ERR)
        raise_state(r, rc, "recv", dl);
    leave(r);
    return got;
}

/* try_recv(knobs=None, view=0) -> message or None (nothing deliverable now) */
static PyObject *Ring_try_recv(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "try_recv(knobs=None, view=0)");
        return NULL;
    }
    int view = nargs > 0 ? knob_view(args[0]) : 0;
    if (view < 0)
        return NULL;
    if (nargs > 1) {
        long v = PyLong_AsLong(args[1]);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (v)
            view = v == 2 ? 2 : 1;
    }
    if (enter(r, "recv") < 0)
        return NULL;
    int rc = OK;
    PyObject *got = consume(r, 0.0, view, 1, &rc);
    if (!got && rc != R_ERR && rc != R_EMPTY)
        raise_state(r, rc, "recv", NULL);
    leave(r);
    if (!got && rc == R_EMPTY)
        Py_RETURN_NONE;
    return got;
}

/* op argument: 1 send, 0 recv, -1 error */
static int get_op(PyObject *op)
{
    if (PyUnicode_Check(op)) {
        if (PyUnicode_CompareWithASCIIString(op, "recv") == 0)
            return 0;
        if (PyUnicode_CompareWithASCIIString(op, "send") == 0)
            return 1;
    }
    PyErr_Format(PyExc_ValueError, "op must be 'send' or 'recv', not %R", op);
    return -1;
}

/* wait(op, deadline): until an attempt in that direction may succeed, the deadline passes
 * or the handle is closed here; consumes nothing, holds no lock, returns None in all cases. */
static PyObject *Ring_wait(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(op, deadline)");
        return NULL;
    }
    int op = get_op(args[0]);
    double deadline = INFINITY;
    if (op < 0 || (args[1] != FOREVER && get_deadline(args[1], &deadline) < 0))
        return NULL;
    if (r->fork_gen != fork_gen)
        after_fork(r);
    atomic_fetch_add(&r->calls, 1);
    if (closing(r) || r->hdr == NULL) {
        leave(r);
        Py_RETURN_NONE; /* the caller's closed check reports it */
    }
    int rc = op ? wait_send(r, deadline) : wait_recv(r, deadline);
    leave(r);
    if (rc == R_ERR)
        return NULL;
    Py_RETURN_NONE;
}

/* ready(op) -> bool: could an attempt in that direction succeed now (or report an error)? */
static PyObject *Ring_ready(Ring *r, PyObject *arg)
{
    int op = get_op(arg);
    if (op < 0)
        return NULL;
    if (closing(r) || r->hdr == NULL)
        Py_RETURN_TRUE;
    if (enter(r, op ? "send" : "recv") < 0) {
        PyErr_Clear();
        Py_RETURN_TRUE; /* broken: the attempt raises */
    }
    struct ring_hdr *h = r->hdr;
    uint64_t claim = atomic_load_explicit(&h->claim, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
    uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
    int ready;
    if (atomic_load(&h->closed)) {
        ready = 1;
    } else if (op) { /* as _wait("send"): space freed since the last failed try_send, or not full */
        uint64_t used = tail - head, pc = atomic_load(&h->pclaim);
        ready = r->fail_valid ? head != r->fail_head : ((int64_t)used < 0 || used < r->cap);
        if (pc && pc != r->token && pclaim_live(h))
            ready = 0;
    } else {
        ready = !(foreign_claim(r, claim) && claimant_alive(h)) &&
                (head != tail || (r->partial && !atomic_load(&h->frag_active)));
    }
    leave(r);
    return PyBool_FromLong(ready);
}

static PyObject *Ring_loan(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "loan(n, deadline=FOREVER)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    if ((n == -1 && PyErr_Occurred()) || (dl && dl != FOREVER && get_deadline(dl, &deadline) < 0))
        return NULL;
    if (enter(r, "loan") < 0)
        return NULL;
    if (n < 0 || (uint64_t)n > r->frag_max) {
        PyErr_Format(PyExc_ValueError, "loan of %zd bytes: the limit for this ring is %llu bytes", n,
                     (unsigned long long)r->frag_max);
        leave(r);
        return NULL;
    }
    uint64_t pad = 0;
    int rc = reserve_locked(r, rec_size((uint64_t)n), 0, deadline, 0, &pad);
    if (rc != OK) {
        if (rc != R_ERR)
            raise_state(r, rc, "loan", dl);
        leave(r);
        return NULL;
    }
    RingLoan *l = PyObject_New(RingLoan, &RingLoanType);
    if (!l) {
        unlock_ring(r, 1);
        leave(r);
        return NULL;
    }
    Py_INCREF(r);
    l->ring = r;
    l->ptr = place(r, pad, (uint64_t)n, F_FIRST | F_LAST, (uint64_t)n);
    l->size = n;
    l->pad = pad;
    l->exports = 0;
    l->done = 0;
    r->exports++;
    leave(r);
    return (PyObject *)l;
}

static PyObject *Ring_qsize(Ring *r, PyObject *unused)
{
    if (enter(r, "qsize") < 0)
        return NULL;
    uint64_t out = atomic_load(&r->hdr->msgs_out), in = atomic_load(&r->hdr->msgs_in);
    leave(r);
    return PyLong_FromUnsignedLongLong((int64_t)(in - out) > 0 ? in - out : 0); /* modular: counters wrap */
}

static PyObject *Ring_used(Ring *r, PyObject *unused)
{
    if (enter(r, "used") < 0)
        return NULL;
    uint64_t head = atomic_load(&r->hdr->head), tail = atomic_load(&r->hdr->tail);
    leave(r);
    return PyLong_FromUnsignedLongLong(tail - head);
}

static void wake_all(struct ring_hdr *h)
{
    futex_wake_all(lo32(&h->tail));
    futex_wake_all(lo32(&h->head));
    futex_wake_all(lo32(&h->claim));
    futex_wake_all(lo32(&h->pclaim));
    futex_wake_all(&h->unfinished);
}

static PyObject *Ring_mark_closed(Ring *r, PyObject *unused)
{
    if (r->hdr == NULL) {
        closed_here(r, "close");
        return NULL;
    }
    if (is_broken(r))
        Py_RETURN_NONE; /* closing a truncated ring must work: its peers were told (closed = 2) */
    atomic_store(&r->hdr->closed, 1);
    wake_all(r->hdr);
    Py_RETURN_NONE;
}

/* interrupt(): closed by this process: every call in flight on this handle returns. */
static PyObject *Ring_interrupt(Ring *r, PyObject *unused)
{
    atomic_store(&r->closing, 1);
    if (r->hdr && !is_broken(r))
        wake_all(r->hdr); /* spurious for other processes' waiters: they re-check */
    Py_RETURN_NONE;
}

/* unmap(): release the mapping now, or when the last call in flight, view or loan ends. */
static PyObject *Ring_unmap(Ring *r, PyObject *unused)
{
    if (r->fork_gen != fork_gen)
        after_fork(r);
    Ring_interrupt(r, NULL);
    Py_DECREF(Py_None);
    r->unmap_pending = 1;
    if (atomic_load(&r->calls) == 0 && r->exports == 0)
        ring_unmap_now(r);
    Py_RETURN_NONE;
}

static PyObject *Ring_add_pending(Ring *r, PyObject *arg)
{
    long d = PyLong_AsLong(arg);
    if ((d == -1 && PyErr_Occurred()) || enter(r, "add_pending") < 0)
        return NULL;
    uint32_t now = atomic_fetch_add(&r->hdr->attach_pending, (uint32_t)d) + (uint32_t)d;
    leave(r);
    return PyLong_FromUnsignedLong(now);
}

static PyObject *Ring_task_add(Ring *r, PyObject *arg)
{
    long d = PyLong_AsLong(arg);
    if ((d == -1 && PyErr_Occurred()) || enter(r, "task_add") < 0)
        return NULL;
    struct ring_hdr *h = r->hdr;
    uint32_t now = atomic_fetch_add(&h->unfinished, (uint32_t)d) + (uint32_t)d;
    if (now == 0 && atomic_load(&h->join_waiters))
        futex_wake_all(&h->unfinished);
    leave(r);
    Py_RETURN_NONE;
}

static PyObject *Ring_task_done(Ring *r, PyObject *unused)
{
    if (enter(r, "task_done") < 0)
        return NULL;
    struct ring_hdr *h = r->hdr;
    uint32_t cur = atomic_load(&h->unfinished);
    do {
        if (cur == 0) {
            leave(r);
            PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
            return NULL;
        }
    } while (!atomic_compare_exchange_weak(&h->unfinished, &cur, cur - 1));
    if (cur == 1 && atomic_load(&h->join_waiters))
        futex_wake_all(&h->unfinished);
    leave(r);
    Py_RETURN_NONE;
}

/* join(deadline=FOREVER) -> bool: wait for unfinished == 0 (False at the deadline) */
static PyObject *Ring_join(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    double deadline = INFINITY;
    PyObject *dl = nargs > 0 ? args[0] : NULL;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "join(deadline=FOREVER)");
        return NULL;
    }
    if ((dl && dl != FOREVER && get_deadline(dl, &deadline) < 0) || enter(r, "join") < 0)
        return NULL;
    struct ring_hdr *h = r->hdr;
    PyObject *res = NULL;
    for (;;) {
        uint32_t cur = atomic_load(&h->unfinished);
        if (cur == 0) {
            res = Py_NewRef(Py_True);
            break;
        }
        int rc = wait_word(r, (uint32_t *)&h->unfinished, cur, &h->join_waiters, deadline);
        if (rc == R_ERR)
            break;
        if (rc == R_BROKEN || rc == R_LOCAL) {
            raise_state(r, rc, "join", dl);
            break;
        }
        if (rc == R_TIMEOUT) {
            res = Py_NewRef(Py_False);
            break;
        }
    }
    leave(r);
    return res;
}

static int put_u64(PyObject *d, const char *k, unsigned long long v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    int rc = o ? PyDict_SetItemString(d, k, o) : -1;
    Py_XDECREF(o);
    return rc;
}

static PyObject *Ring_info(Ring *r, PyObject *unused)
{
    if (enter(r, "info") < 0)
        return NULL;
    struct ring_hdr *h = r->hdr;
    PyObject *d = PyDict_New();
    if (!d || put_u64(d, "repairs", atomic_load(&h->repairs)) || put_u64(d, "capacity", h->capacity) ||
        put_u64(d, "frag_max", r->frag_max) || put_u64(d, "owner_uid", h->owner_uid) ||
        put_u64(d, "owner_pid", h->owner_pid) || put_u64(d, "owner_start", h->owner_start) ||
        put_u64(d, "head", atomic_load(&h->head)) || put_u64(d, "tail", atomic_load(&h->tail)) ||
        put_u64(d, "msgs_in", atomic_load(&h->msgs_in)) || put_u64(d, "msgs_out", atomic_load(&h->msgs_out)) ||
        put_u64(d, "closed", atomic_load(&h->closed)) || put_u64(d, "unfinished", atomic_load(&h->unfinished)) ||
        put_u64(d, "attach_pending", atomic_load(&h->attach_pending)) ||
        put_u64(d, "frag_active", atomic_load(&h->frag_active)) ||
        put_u64(d, "cons_waiters", atomic_load(&h->cons_waiters)) ||
        put_u64(d, "prod_waiters", atomic_load(&h->prod_waiters)) ||
        put_u64(d, "claim_pid", atomic_load(&h->claim) ? atomic_load(&h->claim_pid) : 0) ||
        put_u64(d, "pclaim_pid", atomic_load(&h->pclaim) ? atomic_load(&h->pclaim_pid) : 0) ||
        put_u64(d, "calls", (unsigned long long)atomic_load(&r->calls))) {
        Py_XDECREF(d);
        d = NULL;
    }
    leave(r);
    return d;
}

static PyObject *Ring_get_spin(Ring *r, void *c) { return PyFloat_FromDouble(r->spin); }

static int Ring_set_spin(Ring *r, PyObject *v, void *c)
{
    double s = v ? PyFloat_AsDouble(v) : -1;
    if (s == -1 && PyErr_Occurred())
        return -1;
    r->spin = s < 0 ? 0 : s;
    return 0;
}

static PyObject *Ring_get_frag_max(Ring *r, void *c) { return PyLong_FromUnsignedLongLong(r->frag_max); }
static PyObject *Ring_get_capacity(Ring *r, void *c) { return PyLong_FromUnsignedLongLong(r->cap); }
static PyObject *Ring_get_mapped(Ring *r, void *c) { return PyBool_FromLong(r->hdr != NULL); }

static PyGetSetDef Ring_getset[] = {
    {"spin", (getter)Ring_get_spin, (setter)Ring_set_spin, "seconds to spin before sleeping on the futex", NULL},
    {"frag_max", (getter)Ring_get_frag_max, NULL, "largest payload stored as one record", NULL},
    {"capacity", (getter)Ring_get_capacity, NULL, "data bytes", NULL},
    {"mapped", (getter)Ring_get_mapped, NULL, "False once unmapped", NULL},
    {NULL},
};

#define FAST(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef Ring_methods[] = {
    {"send", FAST(Ring_send), "send(data, deadline=FOREVER, knobs=None, max_items=0): blocking send"},
    {"try_send", FAST(Ring_try_send), "try_send(data, knobs=None, max_items=0) -> bool: False when no room now"},
    {"sendv", FAST(Ring_sendv), "sendv(parts, deadline=FOREVER, max_items=0): the parts as one message"},
    {"recv", FAST(Ring_recv),
     "recv(deadline=FOREVER, knobs=None, view=0): view 1 = RingView, 2 = RingView only for messages >= 16 KiB"},
    {"try_recv", FAST(Ring_try_recv), "try_recv(knobs=None, view=0) -> message or None when nothing now"},
    {"wait", FAST(Ring_wait), "wait(op, deadline): until a send/recv may succeed; consumes nothing, no lock"},
    {"ready", (PyCFunction)Ring_ready, METH_O, "ready(op) -> bool: could a send/recv succeed now"},
    {"loan", FAST(Ring_loan), "loan(n, deadline=FOREVER) -> RingLoan"},
    {"qsize", (PyCFunction)Ring_qsize, METH_NOARGS, "committed messages not yet consumed"},
    {"used", (PyCFunction)Ring_used, METH_NOARGS, "bytes in use"},
    {"mark_closed", (PyCFunction)Ring_mark_closed, METH_NOARGS, "creator: no more traffic; wake every waiter"},
    {"interrupt", (PyCFunction)Ring_interrupt, METH_NOARGS, "closed by this process: wake this handle's calls"},
    {"unmap", (PyCFunction)Ring_unmap, METH_NOARGS,
     "interrupt, then release the mapping (deferred to the last call, view or loan in flight)"},
    {"add_pending", (PyCFunction)Ring_add_pending, METH_O, "adjust the pending-attach count; returns it"},
    {"task_add", (PyCFunction)Ring_task_add, METH_O, "unfinished += n"},
    {"task_done", (PyCFunction)Ring_task_done, METH_NOARGS, "unfinished -= 1 (ValueError at 0)"},
    {"join", FAST(Ring_join), "join(deadline=FOREVER) -> bool: wait for unfinished == 0"},
    {"info", (PyCFunction)Ring_info, METH_NOARGS, "header fields as a dict"},
    {NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._ring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(fd, url, create, capacity, owner_pid, owner_start, spin): a mapped kipc ring",
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_init = (initproc)Ring_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *setup(PyObject *self, PyObject *args)
{
    PyObject *t, *w, *c, *b, *f;
    if (!PyArg_ParseTuple(args, "OOOOO:_setup", &t, &w, &c, &b, &f))
        return NULL;
    Py_XSETREF(E_Timeout, Py_NewRef(t));
    Py_XSETREF(E_WouldBlock, Py_NewRef(w));
    Py_XSETREF(E_Closed, Py_NewRef(c));
    Py_XSETREF(E_Bad, Py_NewRef(b));
    Py_XSETREF(FOREVER, Py_NewRef(f));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", setup, METH_VARARGS,
     "_setup(Timeout, WouldBlock, ChannelClosed, BadObject, FOREVER): kipc's errors and its Deadline(None)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._ring", "kipc's shared-memory ring (see the theory of operation in _ring.c)",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__ring(void)
{
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&RingViewType) < 0 || PyType_Ready(&RingLoanType) < 0)
        return NULL;
    S_end = PyUnicode_InternFromString("end");
    S_timeout = PyUnicode_InternFromString("timeout");
    if (!S_end || !S_timeout)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    static int atfork_done;
    if (!atfork_done++)
        pthread_atfork(NULL, NULL, atfork_child);
    E_Timeout = Py_NewRef(PyExc_TimeoutError);
    E_WouldBlock = Py_NewRef(PyExc_BlockingIOError);
    E_Closed = Py_NewRef(PyExc_EOFError);
    E_Bad = Py_NewRef(PyExc_OSError);
    FOREVER = Py_NewRef(Py_None);
    Py_INCREF(&RingType);
    PyModule_AddObject(m, "Ring", (PyObject *)&RingType);
    Py_INCREF(&RingViewType);
    PyModule_AddObject(m, "RingView", (PyObject *)&RingViewType);
    Py_INCREF(&RingLoanType);
    PyModule_AddObject(m, "RingLoan", (PyObject *)&RingLoanType);
    PyModule_AddIntConstant(m, "MAGIC_LO", (long)(RING_MAGIC & 0xffffffff));
    PyModule_AddObject(m, "MAGIC", PyLong_FromUnsignedLongLong(RING_MAGIC));
    PyModule_AddIntConstant(m, "VERSION", RING_VERSION);
    PyModule_AddIntConstant(m, "HDR_SIZE", HDR_SIZE);
    PyModule_AddIntConstant(m, "REC_HDR", REC_HDR);
    return m;
}
