/*
 * kipc_sync.h — the shared-memory layout of kipc.Lock, kipc.RLock and kipc.Event.
 *
 * One POSIX shm object of KSYNC_SIZE (4096) bytes per object:
 *   /dev/shm/kipc.lock.NAME   (kipc.Lock("posix://NAME"))
 *   /dev/shm/kipc.rlock.NAME  (kipc.RLock("posix://NAME"))
 *   /dev/shm/kipc.event.NAME  (kipc.Event("posix://NAME"))
 *
 * A C program may include this header, shm_open + mmap the object and use it:
 *   lock/rlock: pthread_mutex_lock(&h->mutex) (robust: handle EOWNERDEAD with
 *     pthread_mutex_consistent), set holder_pid = getpid() after locking and 0
 *     before unlocking, then after pthread_mutex_unlock increment release_gen and
 *     FUTEX_WAKE it if gen_waiters != 0 (asyncio waiters sleep on it).
 *   event: set = CAS ev_word from w (w & 1 == 0) to ((w >> 1) + 1) << 1 | 1, then
 *     FUTEX_WAKE(INT_MAX) on ev_word if ev_waiters != 0; clear = CAS w -> w & ~1;
 *     wait = futex-wait while ev_word equals the unset value you read.
 * Futexes are shared (no FUTEX_PRIVATE_FLAG): they are keyed on the shm page.
 * The magic is published last (release) by the creator: never trust the rest
 * before reading it with acquire semantics.
 */
#ifndef KIPC_SYNC_H
#define KIPC_SYNC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define KSYNC_MAGIC 0x434e595343504b4bULL /* "KKPCSYNC" little-endian */
#define KSYNC_VERSION 1u
#define KSYNC_SIZE 4096u

enum { KSYNC_LOCK = 1, KSYNC_RLOCK = 2, KSYNC_EVENT = 3 };

struct ksync_hdr {
    _Atomic uint64_t magic;        /* KSYNC_MAGIC once initialised */
    uint32_t version;              /* KSYNC_VERSION */
    uint32_t kind;                 /* KSYNC_LOCK / KSYNC_RLOCK / KSYNC_EVENT */
    uint32_t size;                 /* KSYNC_SIZE */
    uint32_t owner_uid;            /* creator's euid */
    uint32_t creator_pid;          /* informational */
    uint32_t reserved0;
    _Atomic uint32_t holder_pid;   /* lock: pid of the holder, 0 when free (informational) */
    _Atomic uint32_t recoveries;   /* lock: acquisitions that recovered from a dead holder */
    _Atomic uint32_t release_gen;  /* lock: +1 per release; futex word of non-consuming waits */
    _Atomic uint32_t gen_waiters;  /* lock: threads sleeping on release_gen */
    _Atomic uint32_t ev_word;      /* event: (generation << 1) | is_set */
    _Atomic uint32_t ev_waiters;   /* event: threads sleeping on ev_word */
    uint32_t reserved1[2];
    pthread_mutex_t mutex __attribute__((aligned(64))); /* lock: robust, process-shared */
};

_Static_assert(sizeof(struct ksync_hdr) <= KSYNC_SIZE, "header must fit its page");

#endif
