/*
 * ring_core — the shared-memory ring behind ring:// and kipc.Queue, in C11 + POSIX with no Python.
 * kipc._native._ring (../_ring.c) is its Python binding; the C API (../include/kipc_ring.h) its C
 * one. Both run the same loops: rc_produce, rc_consume, rc_wait_send/recv, rc_ready (ring_core.c).
 * Callers that hold a runtime lock (the GIL) or deliver interrupts (signal handlers that raise)
 * plug them in through rc_hooks: release/reacquire around every wait and big copy, and
 * `interrupted` after every sleep slice (THEORY: time).
 *
 * THEORY OF OPERATION
 * ===================
 *
 * Layout. One POSIX shm object = a 4096-byte header page + `capacity` data bytes
 * (a multiple of 4096). The header keeps each writer's words on its own cache
 * line: identity (magic, version, sizes, owner uid/pid/start time: immutable
 * after init), the producers' robust mutex, the consumers' robust mutex, the
 * tail line (tail, consumer-waiter count), the producer line (msgs_in, producer
 * journal), the head line (head, producer-waiter count), the consumer line
 * (msgs_out, consumer journal), the claim line (which consumer reassembles the
 * message at head, see Claims), the producer-claim line (a half-written
 * fragmented message, see Producer claims) and the task line (JoinableQueue's
 * unfinished count). Header version 3 (v1 had no claim lines; v2 kept msgs_in
 * and the journal on the tail line, msgs_out and its journal on the head line);
 * an older or newer peer is refused at attach by the version check (BadObject).
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
 * of the other side's counter (the first HELD_SPINS pauses, about 2 us, with the
 * runtime lock still held when it has one: most waits of a round trip end
 * sooner, and dropping and retaking the GIL costs as much as such a wait; the
 * rest with it released), then increments the waiter count (seq_cst),
 * re-checks, and sleeps in FUTEX_WAIT (shared, not FUTEX_PRIVATE: the futex is
 * keyed on the shm page) with the observed value checked by the kernel. The
 * other side stores its counter with a seq_cst exchange (the store and the
 * fence in one locked instruction), loads the waiter count (seq_cst) and calls
 * FUTEX_WAKE only if it is non-zero (the Dekker pair of seq_cst operations on
 * both sides means one of them always sees the other). Sleeps are sliced
 * (SLICE, 50 ms) and EINTR ends a slice, so Ctrl-C is checked with the GIL held
 * (PyErr_CheckSignals); the GIL is released while spinning (after the held pauses), sleeping, waiting
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
 *  - Attach (ring.py, and kipc_ring.h for C) verifies type, owner uid, mode bits and size with
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
 * Trust nothing in shared memory. A same-uid peer can write anything into the header or the
 * data area at any moment, so every shared value is range-checked before it is used as an
 * offset, a length or a loop bound; only the handle's own copies (capacity, frag_max) are
 * trusted. Under prod_lock (check_prod) and cons_lock (check_cons): head and tail are record
 * edges (multiples of 16) and 0 <= tail - head <= capacity; the producer then writes at its
 * validated tail (r->vtail, never a re-read) and a loan commits from the tail it was given.
 * Unlocked looks are hints: an impossible pair there is re-checked under the lock. Each
 * record at head: it fits the data area and lies below tail, known flags only, a pad ends
 * exactly at the end, len <= frag_max, a whole message's total equals its len, a first
 * fragment's total is in (frag_max, 2^46], a continuation matches the message being
 * reassembled. The closed word is 0, 1 or 2. A lock word must carry the mutex kind
 * pthread_mutex_init gives it (computed at import) before glibc sees it; any error from
 * pthread_mutex_*lock but EBUSY/ETIMEDOUT/EOWNERDEAD, or EDEADLK on a lock this thread does
 * not hold (a thread-local list), means a garbage lock word. A claim's pid above
 * PID_MAX_LIMIT is dead, never kill()ed. A failed check (corrupt()) raises BadObject naming
 * the field and its value, and sets closed = 2 so every peer raises BadObject ("marked
 * broken by a peer") at its next call, and wakes every waiter. The record-taking loop checks
 * the deadline and pending signals every 256 records (it is bounded by capacity/16 anyway);
 * every wait is sliced (above). Limits: values that are merely wrong but plausible (a claim
 * naming a live pid, a message count) make calls wait until their deadlines or miscount
 * qsize; a peer rewriting a robust mutex's list pointers *while we hold it* can make glibc's
 * unlock write through them (a pthread robust mutex trusts its own word): nothing checks
 * that. These rules are exercised by tests/reliability/test_ring_hostile.py.
 *
 * Cached counters (cache-line traffic). The tail and producer lines (tail, msgs_in, the
 * journal) are written only by producers (cons_waiters aside: a consumer going to sleep), the
 * head and consumer lines only by consumers, so each side's own writes stay in its cache; what moves
 * between cores per message is the tail line and the record's lines. The tail line holds only
 * tail and cons_waiters, so a publish writes it once (the exchange): with the journal and msgs_in
 * on it (v2), a consumer spinning on tail pulled the line back between the producer's stores and
 * again after the exchange (pj_valid = 0), a transfer on the critical path of every message. Head
 * likewise. The consumer prefetches the record at head as soon as it sees data (before it takes
 * cons_lock), so the record's cache misses overlap the lock instead of following it (a write
 * prefetch by the producer before prod_lock measured no better: not done). To keep it so, a producer
 * does not read head on every send: it keeps the head it last read (rc_ring.chead) and decides
 * room with it, reading the live head only when the cached one says "no room" (or fails the
 * range check against tail, e.g. another producer moved tail far on). A consumer likewise keeps
 * the tail it last read (ctail) and re-reads tail only when the cached one shows nothing beyond
 * head. Both hints are values the word really had, read with ACQUIRE, and head and tail only
 * grow, so a stale hint understates the room or the data (never overstates them: nothing is
 * overwritten before it is consumed, nothing read before it is committed); each is
 * range-checked against the live word of its own side before use, like any shared value.
 * The waiter words sit on the line their *reader* owns (cons_waiters is read by the producer
 * after it stores tail, prod_waiters by the consumer after it stores head), so the Dekker load
 * of a waker touches no foreign line while nobody sleeps.
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
#ifndef KIPC_RING_CORE_H
#define KIPC_RING_CORE_H

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the futex words are the low halves of 64-bit counters: little-endian only"
#endif

#pragma GCC visibility push(hidden)

#define RING_MAGIC 0x474e495243504b4bULL /* "KKPCRING" */
#define RING_VERSION 3u
#define HDR_SIZE 4096u
#define REC_HDR 16u
#define F_FIRST 1u
#define F_LAST 2u
#define F_PAD 4u
#define BIG_COPY (256u * 1024u)
#define VIEW_MIN (16u * 1024u) /* recv(view=2): a view only for messages this big */
#define HELD_SPINS 64u /* pauses a waiter spins before it releases the runtime lock (THEORY: waiting) */
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

    /* The line consumers spin on: producers write it once per record (the commit exchange), so a
     * spinning consumer's copy is invalidated once, not once per journal word (THEORY: cached
     * counters). cons_waiters is read by the producer right after its exchange (the line is its own
     * then) and written only by a consumer going to sleep. */
    CL _Atomic uint64_t tail; /* commit word */
    _Atomic uint32_t cons_waiters;
    /* producers only (qsize reads msgs_in): the message count and the journal */
    CL _Atomic uint64_t msgs_in;
    _Atomic uint32_t pj_valid;
    uint64_t pj_tail, pj_msgs;

    /* the line producers read when their cached head says "no room": written once per advance */
    CL _Atomic uint64_t head;
    _Atomic uint32_t prod_waiters;
    /* consumers only (qsize and a bounded Queue's producers read msgs_out) */
    CL _Atomic uint64_t msgs_out;
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
/* THEORY: cached counters. The line a consumer spins on carries nothing a producer writes per
 * record but tail; the head line nothing a consumer writes per record but head. */
#define RC_LINE(f) (offsetof(struct ring_hdr, f) / 64)
_Static_assert(RC_LINE(cons_waiters) == RC_LINE(tail) && RC_LINE(msgs_in) != RC_LINE(tail) &&
                   RC_LINE(pj_valid) != RC_LINE(tail) && RC_LINE(pj_msgs) != RC_LINE(tail),
               "the tail line holds tail and cons_waiters only");
_Static_assert(RC_LINE(prod_waiters) == RC_LINE(head) && RC_LINE(msgs_out) != RC_LINE(head) &&
                   RC_LINE(cj_valid) != RC_LINE(head) && RC_LINE(cj_msgs) != RC_LINE(head) &&
                   RC_LINE(head) != RC_LINE(pj_msgs),
               "the head line holds head and prod_waiters only");
#undef RC_LINE

struct rec {
    uint32_t len, flags;
    uint64_t total;
};

enum { OK = 0, R_TIMEOUT = 1, R_CLOSED = 2, R_BROKEN = 3, R_LOCAL = 4, R_EMPTY = 5, R_CORRUPT = 6, R_MISMATCH = 7, R_HELD = 8, R_ERR = -1 };
#define PID_LIMIT 4194304u /* PID_MAX_LIMIT: a larger pid in a claim is garbage, never a live process */
#define TOTAL_LIMIT (1ull << 46) /* a fragmented message's total beyond this is garbage */
#define CLOSED_BROKEN 2u /* `closed` value: a peer found the object truncated */

/* The runtime a caller lives in (THEORY: time): release() before a wait or a big copy returns a
 * token that reacquire() takes back (the GIL: PyEval_SaveThread/RestoreThread); interrupted()
 * runs after a sleep slice that a signal or a timeout ended and returns non-zero to end the
 * call with R_ERR (Python: PyErr_CheckSignals() < 0). All NULL: a plain C program. */
struct rc_ring;
typedef struct {
    void *(*release)(void);
    void (*reacquire)(void *token);
    int (*interrupted)(void);
    /* A message being reassembled is a binding object (Python: bytes): msg_alloc returns it and
     * sets *bytes to its `total`-byte buffer (NULL: R_ERR, the binding's error set); `r` is the
     * handle receiving it (a binding may embed rc_ring and keep per-call state beside it); obj_keep /
     * obj_drop take and drop a reference (a reassembled message, a half-written try_send's data
     * object). NULL: malloc/free, and try_send data is not kept (a C caller never resumes). */
    void *(*msg_alloc)(struct rc_ring *r, uint64_t total, unsigned char **bytes);
    void *(*obj_keep)(void *obj);
    void (*obj_drop)(void *obj);
} rc_hooks;
extern rc_hooks rc_rt;

/* One process's handle on a mapped ring: what the core needs; bindings embed it. */
typedef struct rc_ring {
    struct ring_hdr *hdr;
    unsigned char *data;
    size_t map_size;
    uint64_t cap, frag_max; /* this handle's own copies: never re-read from the header */
    double spin;            /* seconds */
    _Atomic int closing;    /* closed by this process: every wait returns R_LOCAL */
    int slot;               /* index in the SIGBUS table, -1 if none */
    uint64_t token;         /* this handle's claim token: pid << 32 | serial */
    uint32_t pid;
    uint64_t start;         /* this process's start time (clock ticks), 0 = unknown */
    uint64_t vtail;         /* tail as validated under prod_lock (place/publish use it, never a re-read) */
    /* Hints that keep each side off the other's cache line (THEORY: cached counters): the head
     * this handle last read as a producer and the tail it last read as a consumer. Always a value
     * the shared word really had (head and tail only grow), so a stale one only understates the
     * room or the data; re-validated against the live word on every use. */
    uint64_t chead, ctail;
    char why[200];          /* what a check found corrupt (R_CORRUPT) */
    /* the message this handle reassembles (its claim; under cons_lock) */
    void *partial;          /* rc_hooks object, NULL = none */
    unsigned char *pbuf;    /* its bytes */
    uint64_t filled, ptotal;
    /* the message a try_send left half written (producer claim) */
    void *pdata;            /* rc_hooks object (identity compared), NULL = none */
    uint64_t pdone;         /* bytes of it already published */
    uint64_t fail_head;     /* head seen by the last try_send that found no room */
    int fail_valid;
    uint64_t mis_total;     /* R_MISMATCH: size and first bytes of the message left at head */
    unsigned char mis_head[16];
    int mis_n;
} rc_ring;

/* One part of a message to send (rc_produce gathers them in order). */
typedef struct {
    const void *buf;
    uint64_t len;
} rc_part;

/* What rc_consume found. R_WHOLE: a whole record `len` bytes at `src`, cons_lock held: copy it
 * and call rc_take_whole(r, m->next), or keep the lock as a view (advance + unlock_ring when it
 * is released). OK: `msg` (rc_hooks object, `len` bytes at `src`) is a reassembled message, the
 * caller's reference, lock released. */
typedef struct {
    unsigned char *src;
    uint64_t len, next;
    void *msg;
} rc_msg;
#define R_WHOLE 9

#define RING_SLOTS 1024
extern _Atomic uintptr_t slot_broken[RING_SLOTS];
extern int mutex_kind;

static inline int is_broken(rc_ring *r) { return r->slot >= 0 && atomic_load_explicit(&slot_broken[r->slot], memory_order_relaxed) != 0; }

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

/* A hint (THEORY: cached counters): bring the first two cache lines of the record at byte
 * counter `at` towards this core. `at` may be any value read from shared memory: the address is
 * reduced into the data area, and a prefetch never faults or changes what a load returns. */
static inline void rec_prefetch(const unsigned char *data, uint64_t cap, uint64_t at)
{
    uint64_t off = at & (cap - 1); /* cap: a power of two */
    __builtin_prefetch(data + off, 0, 3);
    if (off + 64 < cap)
        __builtin_prefetch(data + off + 64, 0, 3);
}

static inline uint64_t rec_size(uint64_t len) { return REC_HDR + ((len + 15u) & ~(uint64_t)15u); }

static inline int closing(rc_ring *r) { return atomic_load_explicit(&r->closing, memory_order_relaxed); }

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Would a record of `need` bytes (and an item slot, if max_items) fit at `tail`? Sets *pad.
 * Also used without the lock as a hint: tail and head may then be from different moments
 * (clamped here); the producer re-checks under its lock before writing. */
static inline int room(rc_ring *r, uint64_t tail, uint64_t head, uint64_t need, uint64_t max_items, uint64_t *pad)
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
    uint64_t off = tail & (r->cap - 1); /* cap: a power of two: a mask, not a division */
    *pad = off + need > r->cap ? r->cap - off : 0;
    return used <= r->cap && r->cap - used >= *pad + need;
}

static inline int foreign_claim(rc_ring *r, uint64_t claim) { return claim != 0 && claim != r->token; }

int slot_register(void *base, size_t size);
void slot_unregister(int slot);
int read_stat(uint32_t pid, char *state, uint64_t *start);
void futex_wake_all(void *addr);
int proc_alive(uint32_t pid, uint64_t start);
int corrupt(rc_ring *r, const char *fmt, ...);
int wait_word(rc_ring *r, uint32_t *word, uint32_t expect, _Atomic uint32_t *waiters, double deadline);
void repair_prod(struct ring_hdr *h);
void repair_cons(struct ring_hdr *h);
int lock_ring(rc_ring *r, int prod, double deadline, int nb);
void unlock_ring(rc_ring *r, int prod);
int check_prod(rc_ring *r, uint64_t *tailp, uint64_t *headp);
int check_prod_fresh(rc_ring *r, uint64_t *tailp, uint64_t *headp);
int prod_room(rc_ring *r, uint64_t need, uint64_t max_items, uint64_t *pad, uint64_t *headp);
int check_cons(rc_ring *r, uint64_t *headp, uint64_t *tailp);
void frag_abort(struct ring_hdr *h);
int pclaim_live(struct ring_hdr *h);
void pclaim_end(struct ring_hdr *h, uint64_t token, int abort);
void probe_producer(struct ring_hdr *h);
void publish(struct ring_hdr *h, uint64_t new_tail, uint64_t new_msgs);
unsigned char *place(rc_ring *r, uint64_t pad, uint64_t len, uint32_t flags, uint64_t total);
void advance(struct ring_hdr *h, uint64_t new_head, int count);
void claim_set(rc_ring *r);
void claim_clear(struct ring_hdr *h, uint64_t token);
int claimant_alive(struct ring_hdr *h);
void wake_all(struct ring_hdr *h);
int corrupt(rc_ring *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *rc_header_init(void *base, size_t size, int create, uint64_t capacity, uint32_t owner_pid,
                           uint64_t owner_start, uint64_t start);
void rc_bind(rc_ring *r, void *base, size_t size);
void rc_process_init(void);
/* The produce / consume loops (THEORY), shared by every binding. */
void rc_copy(void *dst, const void *src, uint64_t len); /* a big copy releases the runtime lock */
int rc_reserve(rc_ring *r, uint64_t need, uint64_t max_items, double deadline, int nb, uint64_t *pad);
int rc_produce(rc_ring *r, const rc_part *parts, int n, uint64_t total, double deadline, uint64_t max_items, int nb,
               void *obj);
int rc_consume(rc_ring *r, double deadline, int nb, const void *ex, size_t exn, rc_msg *m);
int rc_take_whole(rc_ring *r, uint64_t next);
int rc_wait_recv(rc_ring *r, double deadline);
int rc_wait_send(rc_ring *r, double deadline);
int rc_ready(rc_ring *r, int send);
void rc_drop_partial(rc_ring *r);
void rc_drop_pdata(rc_ring *r);
void rc_forget(rc_ring *r);
const char *rc_check_record(const rc_ring *r, uint64_t off, uint32_t len, uint32_t flags, uint64_t total,
                            uint64_t avail, int has_partial, uint64_t ptotal, uint64_t filled);

#pragma GCC visibility pop
#endif
