/*
 * topic_core — the shared-memory broadcast topic behind RingTopic (ring:// publish/subscribe),
 * in C11 + POSIX with no Python. kipc._native._topic (../_topic.c) is its Python binding.
 *
 * THEORY OF OPERATION
 * ===================
 *
 * Layout. One POSIX shm object /kipc.ring.NAME (the ring:// namespace) = a header (a multiple of 4096 bytes: identity,
 * the publisher lock, the commit line, the `oldest` line, the space line, then max_subs
 * subscriber slots of 64 bytes) + `capacity` data bytes (a power of two in [4096, 2^32], so byte
 * counters stay continuous across the 2^64 wrap). The magic is "KKPCTOPC", distinct from the
 * ring's "KKPCRING", so neither attaches the other's object.
 *
 * Records. wpos (the commit word) and oldest are 64-bit byte counters that only grow; a record
 * starts at counter % capacity and never wraps (a PAD record fills the end). A record is a
 * 16-byte header {u64 seq, u32 len, u32 flags} + payload rounded up to 16; `seq` is the
 * message number (0, 1, 2, ... in publish order; a PAD carries the number of the message after
 * it). A message is at most frag_max = capacity/2 - 16 bytes (no fragments: a topic message is
 * one record; a bigger one is MessageTooLarge before anything is written).
 *
 * Publishing. Publishers serialize on `lock`, a 64-bit CAS word holding the holder's token
 * (pid << 32 | low 32 bits of its process start time; 0 = free). Under the lock a publisher
 * validates wpos/oldest, computes where its record goes, and in overflow=block checks the
 * cursor of every occupied subscriber slot: if one is too far behind it unlocks and waits on
 * the `space` futex word (nobody waits holding the lock). The scan is skipped while the write
 * stays below the minimum cursor the handle last computed: cursors only grow, and every join
 * (the one way a cursor can appear below it) bumps `joins`, which invalidates that minimum. Then it moves `oldest` past every
 * record its write will overwrite (stored, then a seq_cst fence, before any byte is written),
 * writes the PAD and the record (a payload of 1 MiB or more with non-temporal stores on x86-64,
 * then an sfence: a release store does not order those), commits through a journal {j_wpos, j_wmsg, j_valid} (so a
 * publisher killed between the wpos and wmsg stores is rolled forward by the next holder),
 * stores wpos with RELEASE, unlocks, and wakes subscribers only if one waits.
 *
 * Subscribing. A subscriber joins under the lock: it takes a free slot (or one whose owner
 * died), sets its cursor {pos, msgno} to the commit point (or to the history=N-th last
 * message still in the buffer) and then publishes its token. It keeps its own copies of pos,
 * msgno and dropped (trusted); the slot is a mirror for publishers and `kipc ls`. Reading
 * needs no lock: load wpos (ACQUIRE); pos == wpos means empty. Otherwise it checks
 * oldest <= pos, copies the record header, validates it (seq == msgno, sizes inside the data
 * area and below wpos), copies the payload (or lends a view), then — seqlock style — fences
 * and re-loads oldest: if oldest moved past pos while it copied, the copy may be torn and is
 * discarded. A subscriber found behind `oldest` (overflow=drop_oldest, or a forked child's
 * rejoin) resynchronises under the lock to the oldest record still there and adds exactly the
 * skipped message numbers to `dropped`. Then it stores its slot's pos (RELEASE) and, if a
 * publisher waits for space, bumps `space` and wakes it.
 *
 * Overflow. block (default, lossless): a publisher never overwrites a record a live
 * subscriber has not consumed; it blocks (or times out) until the slowest live subscriber
 * moves. With no subscriber at all the oldest records are overwritten (nobody is owed them;
 * they serve history=). drop_oldest: the publisher never waits for subscribers; laggards skip
 * ahead and count what they missed. A loan (tc_publish with nparts < 0) returns with the lock
 * held and the record placed; the caller fills the payload in place and tc_loan_end commits it
 * or abandons it (nothing published; a holder killed mid-loan is taken over like any dead lock
 * holder). A view (recv(view=True)) is offered in block mode only:
 * the record stays pinned (the cursor does not move) until the view is released.
 *
 * Waiting. Subscribers wait on the low 32 bits of wpos (data_waiters counts them), publishers
 * on `space` (space_waiters): the waiter increments the count (seq_cst), re-checks and sleeps
 * in FUTEX_WAIT (shared) with the value checked by the kernel; the other side stores, fences
 * and wakes only when the count is non-zero (Dekker pair: one of them sees the other). Waits
 * spin `spin` seconds first, then sleep in SLICE (50 ms) steps: every step checks the
 * deadline, this handle's `closing`, the header's `closed` and (through the hooks) signals.
 * The lock is taken by CAS with a short spin, then sched_yield / 50 µs naps up to the
 * deadline: a SIGSTOPped holder delays nobody past a timeout.
 *
 * Crash cases (a peer may die at any instruction).
 *  - Publisher dies holding the lock: the next locker sees the holder's token, finds its
 *    process gone (kill(pid,0) + /proc/PID/stat: gone, zombie, or another start time), takes
 *    the lock over by CAS and repairs: rolls a valid journal forward. An uncommitted record is
 *    simply overwritten; `oldest` may have moved past records that no new message replaced
 *    (drop_oldest subscribers count them as dropped: they did miss them).
 *  - Subscriber dies (even SIGKILL): its slot keeps its token; a publisher blocked by that
 *    slot for PROBE (10 ms) checks the owner and frees the slot by CAS, so the publisher goes on
 *    within bounded time. A join that finds every slot taken checks them the same way.
 *  - A forked child inherits the parent's handle: its first subscriber call joins a new slot
 *    at the handle's own cursor (so it continues where the parent's handle was), publisher
 *    calls just use the child's token.
 *
 * Trust nothing in shared memory. Only the handle's own copies (capacity, frag_max, max_subs,
 * overflow, its cursor) are trusted. wpos and oldest must be multiples of 16 with
 * 0 <= wpos - oldest <= capacity; a slot's pos in block mode 0 <= wpos - pos <= capacity; a
 * record must lie inside the data area and below wpos, carry only known flags, a PAD must end
 * exactly at the end, len <= frag_max, and seq must be the expected message number. A lock
 * token naming a pid above PID_MAX_LIMIT is dead, never kill()ed. A failed check (tc_corrupt)
 * names the field, sets closed = 2 (every peer then raises BadObject) and wakes every waiter.
 * Every loop is bounded (record walks by capacity/16) and every wait has a deadline.
 *
 * Shared helpers. The process liveness probe (pid + start time) and the sliced futex wait
 * follow ring_core.c; they are re-implemented here (tc_proc_alive, tc_wait_word) rather than
 * linked, because ring_core.c is compiled into _ring only and owns the SIGBUS table.
 * Limit: a same-uid peer truncating the object after attach can SIGBUS this process (the
 * ring's SIGBUS guard is not shared with topics).
 */
#ifndef KIPC_TOPIC_CORE_H
#define KIPC_TOPIC_CORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the futex word is the low half of a 64-bit counter: little-endian only"
#endif

#pragma GCC visibility push(hidden)

#define TOPIC_MAGIC 0x43504f5443504b4bULL /* "KKPCTOPC" */
#define TOPIC_VERSION 1u
#define TC_PAGE 4096u
#define TC_REC 16u
#define TC_F_PAD 1u
#define TC_SLICE 0.05
#define TC_PROBE 0.01
#define TC_MAX_SUBS 1024u
#define TC_MAX_CAP (1ull << 32) /* record lengths (payloads and pads, < capacity/2) are 32 bits */
#define TC_PID_LIMIT 4194304u
#define TC_CLOSED_BROKEN 2u
#define TC_OVERFLOW_BLOCK 0u
#define TC_OVERFLOW_DROP 1u

#define TC_CL __attribute__((aligned(64)))

struct tc_slot {
    _Atomic uint64_t token; /* owner pid << 32 | start & 0xffffffff; 0 = free */
    _Atomic uint64_t pos;   /* byte counter of the next record to read */
    _Atomic uint64_t msgno; /* number of the next message to read */
    _Atomic uint64_t dropped;
    uint64_t spare[4];
};

struct tc_hdr {
    _Atomic uint64_t magic; /* published last by the creator */
    uint32_t version, hdr_size;
    uint64_t capacity, total_size;
    uint32_t owner_uid, owner_pid;
    uint64_t owner_start;
    uint32_t max_subs, overflow;
    _Atomic uint32_t closed; /* 1: the creator closed the topic; 2: broken */
    _Atomic uint32_t repairs;

    TC_CL _Atomic uint64_t lock;
    _Atomic uint32_t j_valid;
    _Atomic uint32_t joins; /* bumped (under the lock) by every join: publishers' cached minimum is stale */
    uint64_t j_wpos, j_wmsg;

    TC_CL _Atomic uint64_t wpos; /* commit word; its low half is the subscribers' futex */
    _Atomic uint64_t wmsg;       /* messages committed (the next message's number) */
    _Atomic uint32_t data_waiters;

    TC_CL _Atomic uint64_t oldest; /* byte counter of the oldest intact record */

    TC_CL _Atomic uint32_t space; /* bumped when a cursor moves and a publisher waits */
    _Atomic uint32_t space_waiters;

    TC_CL struct tc_slot slots[];
};

struct tc_rec {
    uint64_t seq;
    uint32_t len, flags;
};

enum { TC_OK = 0, TC_TIMEOUT = 1, TC_CLOSED = 2, TC_LOCAL = 4, TC_EMPTY = 5, TC_CORRUPT = 6, TC_FULL = 7,
       TC_NOSLOT = 8, TC_EVICTED = 9, TC_ERR = -1 };

typedef struct {
    void *(*release)(void);
    void (*reacquire)(void *token);
    int (*interrupted)(void);
} tc_hooks;
extern tc_hooks tc_rt;

typedef struct {
    struct tc_hdr *hdr;
    unsigned char *data;
    size_t map_size;
    uint64_t cap, frag_max; /* this handle's own copies */
    uint32_t max_subs, overflow;
    double spin;
    _Atomic int closing;
    /* subscriber state (trusted copies); slot < 0: not subscribed */
    int slot;
    int subscriber;     /* this handle subscribes (joins lazily after a fork) */
    unsigned gen;       /* fork generation the slot was joined in */
    uint64_t pos, msgno, dropped;
    /* publisher state */
    uint64_t want;        /* record bytes the last publish found no room for (the send wait's test) */
    double blocked_since; /* when a publish first found no room (dead-subscriber probes), 0 = not */
    double lock_probe_at; /* next time a send wait checks the lock holder's liveness */
    unsigned char *loan_dst; /* an open loan's payload (the lock is held), NULL = none */
    uint64_t loan_end, loan_msg;
    uint64_t min_pos;     /* a lower bound of every live cursor (block mode), valid while joins == min_joins */
    uint32_t min_joins;
    int min_valid;
    char why[200];
} tc_topic;

uint64_t tc_self_token(void);
unsigned tc_fork_gen(void);
int tc_proc_alive_token(uint64_t token);
uint64_t tc_hdr_size(uint32_t max_subs);
const char *tc_header_init(void *base, size_t size, uint64_t capacity, uint32_t max_subs, uint32_t overflow,
                           uint32_t owner_pid, uint64_t owner_start);
const char *tc_bind(tc_topic *t, void *base, size_t size);
int tc_corrupt(tc_topic *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tc_wake_all(tc_topic *t);

/* publisher: one message of `len` bytes gathered from parts; nb: one attempt (TC_FULL if no room) */
typedef struct {
    const void *buf;
    size_t len;
} tc_part;
int tc_publish(tc_topic *t, const tc_part *parts, int nparts, uint64_t len, double deadline, int nb);
void tc_loan_end(tc_topic *t, int commit); /* after tc_publish(nparts = -1): publish (1) or abandon (0) */
/* subscriber */
int tc_join(tc_topic *t, uint64_t history, double deadline);
void tc_leave(tc_topic *t);
int tc_peek(tc_topic *t, const unsigned char **ptr, uint32_t *len, double deadline);
int tc_consume(tc_topic *t, uint32_t len, double deadline); /* TC_OK, or TC_EMPTY: torn, peek again */
/* readiness: wait until an attempt may succeed (consumes nothing); ready: same, no wait */
int tc_wait(tc_topic *t, int send, double deadline);
int tc_ready(tc_topic *t, int send);
void tc_interrupt(tc_topic *t);
void tc_mark_closed(tc_topic *t);

#pragma GCC visibility pop
#endif
