/*
 * kipc._native._sync — named robust locks and events on POSIX shared memory.
 *
 * THEORY OF OPERATION
 * ===================
 *
 * Layout: kipc_sync.h (one 4 KiB shm object; C programs may include it).
 *
 * Lock / RLock. The lock is a glibc pthread mutex, PTHREAD_PROCESS_SHARED and
 * PTHREAD_MUTEX_ROBUST, of type ERRORCHECK (Lock) or RECURSIVE (RLock). The
 * kernel's robust-futex list makes owner death visible: when the holding
 * thread exits or its process dies (SIGKILL included), the kernel marks the
 * futex word OWNER_DIED and wakes one waiter; the next locker gets EOWNERDEAD,
 * we call pthread_mutex_consistent() at once, count it in `recoveries`, and the
 * acquire returns True with the handle's `recovered` flag set, so the caller
 * knows the state the lock protects may be half-updated.
 * Ownership is per thread (a pthread mutex is unlocked by the thread that
 * locked it): release() from another thread fails with RuntimeError.
 *
 * Waiting. Blocking acquires call pthread_mutex_clocklock(CLOCK_MONOTONIC) in
 * slices of SLICE seconds with the GIL released; between slices Python signal
 * handlers run (PyErr_CheckSignals: Ctrl-C gets through) and a close() by
 * another thread of this process is noticed. A SIGSTOPped holder is just a
 * holder: waiters return False at their deadline.
 *
 * Non-consuming waits (asyncio). aacquire must never end up holding the lock
 * after a cancellation, and a pthread mutex locked by a worker thread could not
 * be released by the event-loop thread. So the loop thread only try-locks, and
 * a worker thread waits, without taking anything, for `release_gen` to change:
 * release() increments it after unlocking (seq_cst) and FUTEX_WAKEs it only if
 * `gen_waiters` is non-zero; a waiter increments gen_waiters (seq_cst) before
 * re-reading release_gen and sleeping (the Dekker pair: one side always sees
 * the other). A holder that dies never releases: the waiter's slice ends and
 * the loop thread's next try-lock gets EOWNERDEAD.
 *
 * Event. ev_word = (generation << 1) | is_set. set() CASes an unset word to the
 * next generation with the set bit, then wakes every waiter (FUTEX_WAKE
 * INT_MAX) if ev_waiters is non-zero; clear() only drops the bit. A waiter
 * reads the word; if unset, it sleeps in FUTEX_WAIT while the word still holds
 * that value (checked by the kernel, so a set() between the read and the sleep
 * is never missed). Any change of the word means a set() happened during the
 * wait: wait() returns True even if clear() followed at once (threading.Event
 * does the same). Sleeps are sliced (SLICE) only to run signal handlers; no
 * state is polled.
 *
 * Closing. Calls that release the GIL count themselves in `busy`; close()
 * marks the handle closed (waiters leave at the end of their slice with
 * ChannelClosed) and the mapping is unmapped by the last call to leave. If a
 * thread of this process still holds the lock at close, the mapping is kept
 * (the kernel's robust list points into it; unmapping it would make the
 * process's death invisible and wedge the lock).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kipc_sync.h"

#define SLICE 0.1 /* seconds between signal / close checks while blocked */

typedef struct {
    PyObject_HEAD
    struct ksync_hdr *hdr;
    PyObject *url;
    int kind;
    int closing;        /* close() was called */
    Py_ssize_t busy;    /* calls in flight with the GIL released */
    int recovered;      /* the last successful acquire repaired a dead holder's lock */
    unsigned dead_pid;  /* holder_pid found by that repair (0 if unknown) */
} Sync;

static PyObject *E_Closed, *E_Bad;

/* getpid() is a system call in glibc >= 2.25; the hot path reads this copy (reset in forked children). */
static uint32_t self_pid;
static void reset_pid(void) { self_pid = (uint32_t)getpid(); }

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static struct timespec abs_ts(double t)
{
    struct timespec ts = {(time_t)t, (long)((t - floor(t)) * 1e9)};
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    return ts;
}

static struct timespec rel_ts(double t)
{
    if (t < 0)
        t = 0;
    struct timespec ts = {(time_t)t, (long)((t - floor(t)) * 1e9)};
    return ts;
}

static void futex_wake_all(void *addr) { syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }

static int futex_wait(void *addr, uint32_t expect, double secs)
{
    struct timespec ts = rel_ts(secs);
    if (syscall(SYS_futex, addr, FUTEX_WAIT, expect, &ts, NULL, 0) == -1)
        return errno;
    return 0;
}

static void do_unmap(Sync *s)
{
    if (s->hdr) {
        munmap(s->hdr, KSYNC_SIZE);
        s->hdr = NULL;
    }
}

static unsigned mutex_tid(struct ksync_hdr *h) { return (unsigned)h->mutex.__data.__lock & FUTEX_TID_MASK; }

/* The mapping stays while this process holds the lock (see "Closing"). */
static int held_here(struct ksync_hdr *h)
{
    return h->kind != KSYNC_EVENT && mutex_tid(h) != 0 &&
           atomic_load_explicit(&h->holder_pid, memory_order_relaxed) == self_pid;
}

static void leave(Sync *s)
{
    s->busy--;
    if (s->closing && s->busy == 0 && s->hdr && !held_here(s->hdr))
        do_unmap(s);
}

static int check(Sync *s)
{
    if (s->hdr == NULL || s->closing) {
        PyErr_Format(E_Closed, "%S: closed by this process", s->url);
        return -1;
    }
    return 0;
}

static int closed_error(Sync *s, const char *op)
{
    PyErr_Format(E_Closed, "%s on %S: closed by this process", op, s->url);
    return -1;
}

/* ------------------------------------------------------------------------- */
/* construction */

static int Sync_init(Sync *s, PyObject *args, PyObject *kw)
{
    int fd, kind, create;
    PyObject *url;
    if (!PyArg_ParseTuple(args, "iipU:Sync", &fd, &kind, &create, &url))
        return -1;
    if (kind < KSYNC_LOCK || kind > KSYNC_EVENT) {
        PyErr_SetString(PyExc_ValueError, "kind must be KIND_LOCK, KIND_RLOCK or KIND_EVENT");
        return -1;
    }
    if (s->hdr) {
        PyErr_SetString(PyExc_RuntimeError, "Sync already initialised");
        return -1;
    }
    Py_INCREF(url);
    Py_XSETREF(s->url, url);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (create && ftruncate(fd, KSYNC_SIZE) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!create && st.st_size != KSYNC_SIZE) {
        PyErr_Format(E_Bad, "open %S: %lld bytes, not a kipc sync object (%u bytes); refused", url,
                     (long long)st.st_size, KSYNC_SIZE);
        return -1;
    }
    void *base = mmap(NULL, KSYNC_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct ksync_hdr *h = base;
    if (create) {
        memset(h, 0, sizeof *h);
        h->version = KSYNC_VERSION;
        h->kind = (uint32_t)kind;
        h->size = KSYNC_SIZE;
        h->owner_uid = (uint32_t)geteuid();
        h->creator_pid = (uint32_t)getpid();
        if (kind != KSYNC_EVENT) {
            pthread_mutexattr_t a;
            pthread_mutexattr_init(&a);
            pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
            pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
            pthread_mutexattr_settype(&a, kind == KSYNC_RLOCK ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
            int e = pthread_mutex_init(&h->mutex, &a);
            pthread_mutexattr_destroy(&a);
            if (e) {
                munmap(base, KSYNC_SIZE);
                errno = e;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
        }
        atomic_store_explicit(&h->magic, KSYNC_MAGIC, memory_order_release); /* published last */
    } else {
        /* a creator between ftruncate and publishing the magic: give it a moment */
        double end = mono() + 1.0;
        while (atomic_load_explicit(&h->magic, memory_order_acquire) == 0 && mono() < end) {
            struct timespec ts = {0, 2000000};
            Py_BEGIN_ALLOW_THREADS
            nanosleep(&ts, NULL);
            Py_END_ALLOW_THREADS
        }
        const char *why = NULL;
        if (atomic_load_explicit(&h->magic, memory_order_acquire) != KSYNC_MAGIC)
            why = "bad magic (not a kipc sync object, or its creator died while initialising)";
        else if (h->version != KSYNC_VERSION)
            why = "unsupported version";
        else if (h->size != KSYNC_SIZE)
            why = "size in the header does not match";
        else if (h->kind != (uint32_t)kind)
            why = h->kind == KSYNC_LOCK ? "it is a Lock" : h->kind == KSYNC_RLOCK ? "it is an RLock" :
                  h->kind == KSYNC_EVENT ? "it is an Event" : "unknown kind";
        else if (h->owner_uid != (uint32_t)geteuid())
            why = "header names another owner uid";
        if (why) {
            munmap(base, KSYNC_SIZE);
            PyErr_Format(E_Bad, "open %S: %s; refused", url, why);
            return -1;
        }
    }
    s->hdr = h;
    s->kind = kind;
    s->closing = 0;
    return 0;
}

static void Sync_dealloc(Sync *s)
{
    /* Finalizer: release the mapping unless this process holds the lock (see "Closing"). */
    if (s->hdr && s->busy == 0 && !held_here(s->hdr))
        do_unmap(s);
    Py_XDECREF(s->url);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* ------------------------------------------------------------------------- */
/* lock */

static int not_lock(Sync *s)
{
    if (s->kind == KSYNC_EVENT) {
        PyErr_Format(PyExc_TypeError, "%S is an Event, not a lock", s->url);
        return -1;
    }
    return 0;
}

/* After a successful lock (rc 0 or EOWNERDEAD). */
static PyObject *got_lock(Sync *s, int rc)
{
    struct ksync_hdr *h = s->hdr;
    if (rc == EOWNERDEAD) {
        s->dead_pid = atomic_load_explicit(&h->holder_pid, memory_order_relaxed);
        atomic_fetch_add(&h->recoveries, 1);
        pthread_mutex_consistent(&h->mutex);
        s->recovered = 1;
    } else if (s->kind == KSYNC_RLOCK && h->mutex.__data.__count > 1) {
        Py_RETURN_TRUE; /* recursion: nothing else changes */
    } else {
        s->recovered = 0;
    }
    atomic_store_explicit(&h->holder_pid, self_pid, memory_order_relaxed);
    Py_RETURN_TRUE;
}

static PyObject *lock_error(Sync *s, int rc)
{
    if (rc == EDEADLK) {
        PyErr_Format(PyExc_RuntimeError,
                     "acquire on %S: this thread already holds it (a blocking acquire would deadlock; "
                     "kipc.Lock is not recursive, use kipc.RLock)", s->url);
    } else if (rc == ENOTRECOVERABLE) {
        PyErr_Format(E_Bad, "acquire on %S: the lock is not recoverable (a C user unlocked it after "
                     "EOWNERDEAD without pthread_mutex_consistent)", s->url);
    } else {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return NULL;
}

static int parse_acquire(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *blocking,
                         double *timeout)
{
    PyObject *b = NULL, *t = NULL;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most 2 arguments");
        return -1;
    }
    if (nargs > 0)
        b = args[0];
    if (nargs > 1)
        t = args[1];
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(k, "blocking") == 0 && !b)
                b = args[nargs + i];
            else if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0 && !t)
                t = args[nargs + i];
            else {
                PyErr_Format(PyExc_TypeError, "acquire() got an unexpected or repeated keyword argument %R", k);
                return -1;
            }
        }
    }
    *blocking = 1;
    *timeout = -1.0;
    if (b) {
        int v = PyObject_IsTrue(b);
        if (v < 0)
            return -1;
        *blocking = v;
    }
    if (t && t != Py_None) {
        double v = PyFloat_AsDouble(t);
        if (v == -1.0 && PyErr_Occurred())
            return -1;
        if (isnan(v)) {
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return -1;
        }
        *timeout = v;
    }
    if (!*blocking && *timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (*timeout < 0 && *timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return -1;
    }
    return 0;
}

static PyObject *Sync_acquire(Sync *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int blocking;
    double timeout;
    if ((nargs || kwnames) && parse_acquire(args, nargs, kwnames, &blocking, &timeout) < 0)
        return NULL;
    if (!nargs && !kwnames) {
        blocking = 1;
        timeout = -1.0;
    }
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    pthread_mutex_t *m = &s->hdr->mutex;
    int rc = pthread_mutex_trylock(m);
    if (rc == 0 || rc == EOWNERDEAD)
        return got_lock(s, rc);
    if (rc == EBUSY || rc == EDEADLK) {
        if (!blocking || timeout == 0.0)
            Py_RETURN_FALSE;
    } else {
        return lock_error(s, rc);
    }
    double deadline = timeout < 0 ? INFINITY : mono() + timeout;
    s->busy++;
    for (;;) {
        double now = mono();
        if (now >= deadline) {
            leave(s);
            Py_RETURN_FALSE;
        }
        double until = now + SLICE < deadline ? now + SLICE : deadline;
        struct timespec ts = abs_ts(until);
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        if (rc != ETIMEDOUT)
            break;
        if (s->closing) {
            leave(s);
            closed_error(s, "acquire");
            return NULL;
        }
        if (PyErr_CheckSignals() < 0) {
            leave(s);
            return NULL;
        }
    }
    if (rc == 0 || rc == EOWNERDEAD) {
        if (s->closing) { /* closed while we waited: do not keep what nobody will release */
            if (rc == EOWNERDEAD)
                pthread_mutex_consistent(m);
            atomic_store_explicit(&s->hdr->holder_pid, 0, memory_order_relaxed);
            pthread_mutex_unlock(m);
            leave(s);
            closed_error(s, "acquire");
            return NULL;
        }
        PyObject *res = got_lock(s, rc);
        leave(s);
        return res;
    }
    leave(s);
    return lock_error(s, rc);
}

static PyObject *Sync_release(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    struct ksync_hdr *h = s->hdr;
    uint32_t prev = 0;
    int last = s->kind != KSYNC_RLOCK || h->mutex.__data.__count <= 1;
    if (last) { /* only the holder writes holder_pid: no atomic read-modify-write needed */
        prev = atomic_load_explicit(&h->holder_pid, memory_order_relaxed);
        atomic_store_explicit(&h->holder_pid, 0, memory_order_relaxed);
    }
    int rc = pthread_mutex_unlock(&h->mutex);
    if (rc != 0) {
        if (last)
            atomic_store_explicit(&h->holder_pid, prev, memory_order_relaxed);
        if (rc == EPERM) {
            if (mutex_tid(h) == 0)
                PyErr_Format(PyExc_RuntimeError, "release unlocked lock %S", s->url);
            else
                PyErr_Format(PyExc_RuntimeError,
                             "cannot release %S: it is held by another thread (thread id %u); a kipc lock is "
                             "released by the thread that acquired it", s->url, mutex_tid(h));
            return NULL;
        }
        return lock_error(s, rc);
    }
    if (last) {
        atomic_fetch_add(&h->release_gen, 1); /* seq_cst: pairs with the waiter's gen_waiters increment */
        if (atomic_load(&h->gen_waiters))
            futex_wake_all(&h->release_gen);
    }
    Py_RETURN_NONE;
}

static PyObject *Sync_locked(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    return PyBool_FromLong(mutex_tid(s->hdr) != 0);
}

static PyObject *Sync_owned(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    return PyBool_FromLong(mutex_tid(s->hdr) == (unsigned)syscall(SYS_gettid));
}

static PyObject *Sync_release_gen(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_load(&s->hdr->release_gen));
}

/* wait_release(gen, timeout) -> bool: wait (consuming nothing) until release_gen != gen. One call
 * waits at most min(timeout, SLICE); True if it changed. */
static PyObject *Sync_wait_release(Sync *s, PyObject *args)
{
    unsigned long gen;
    double timeout;
    if (!PyArg_ParseTuple(args, "kd:wait_release", &gen, &timeout))
        return NULL;
    if (check(s) < 0 || not_lock(s) < 0)
        return NULL;
    struct ksync_hdr *h = s->hdr;
    if (timeout > SLICE)
        timeout = SLICE;
    int changed;
    s->busy++;
    Py_BEGIN_ALLOW_THREADS
    atomic_fetch_add(&h->gen_waiters, 1);
    if (atomic_load(&h->release_gen) == (uint32_t)gen && timeout > 0)
        futex_wait(&h->release_gen, (uint32_t)gen, timeout);
    atomic_fetch_sub(&h->gen_waiters, 1);
    changed = atomic_load(&h->release_gen) != (uint32_t)gen || mutex_tid(h) == 0;
    Py_END_ALLOW_THREADS
    leave(s);
    return PyBool_FromLong(changed);
}

/* ------------------------------------------------------------------------- */
/* event */

static int not_event(Sync *s)
{
    if (s->kind != KSYNC_EVENT) {
        PyErr_Format(PyExc_TypeError, "%S is a lock, not an Event", s->url);
        return -1;
    }
    return 0;
}

static PyObject *Sync_set(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    struct ksync_hdr *h = s->hdr;
    uint32_t w = atomic_load(&h->ev_word);
    for (;;) {
        if (w & 1u)
            Py_RETURN_NONE;
        uint32_t nw = (((w >> 1) + 1u) << 1) | 1u;
        if (atomic_compare_exchange_weak(&h->ev_word, &w, nw))
            break;
    }
    if (atomic_load(&h->ev_waiters))
        futex_wake_all(&h->ev_word);
    Py_RETURN_NONE;
}

static PyObject *Sync_clear(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    atomic_fetch_and(&s->hdr->ev_word, ~1u);
    Py_RETURN_NONE;
}

static PyObject *Sync_is_set(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    return PyBool_FromLong(atomic_load(&s->hdr->ev_word) & 1u);
}

static PyObject *Sync_word(Sync *s, PyObject *unused)
{
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_load(&s->hdr->ev_word));
}

/* Wait until ev_word != w or the deadline; returns 1 changed, 0 timed out, -1 error. */
static int wait_word(Sync *s, uint32_t w, double deadline, int one_slice)
{
    struct ksync_hdr *h = s->hdr;
    s->busy++;
    for (;;) {
        if (atomic_load(&h->ev_word) != w) {
            leave(s);
            return 1;
        }
        double now = mono();
        if (now >= deadline) {
            leave(s);
            return 0;
        }
        double left = deadline - now;
        if (left > SLICE)
            left = SLICE;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        atomic_fetch_add(&h->ev_waiters, 1); /* seq_cst: pairs with set()'s CAS + load */
        if (atomic_load(&h->ev_word) == w)
            err = futex_wait(&h->ev_word, w, left);
        atomic_fetch_sub(&h->ev_waiters, 1);
        Py_END_ALLOW_THREADS
        if (atomic_load(&h->ev_word) != w) {
            leave(s);
            return 1;
        }
        if (s->closing) {
            leave(s);
            closed_error(s, "wait");
            return -1;
        }
        if ((err == EINTR || err == ETIMEDOUT || err == 0) && PyErr_CheckSignals() < 0) {
            leave(s);
            return -1;
        }
        if (one_slice) {
            leave(s);
            return 0;
        }
    }
}

static PyObject *Sync_wait(Sync *s, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout = -1.0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "wait() takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        timeout = PyFloat_AsDouble(args[0]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (isnan(timeout)) {
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return NULL;
        }
        if (timeout < 0)
            timeout = 0; /* threading.Event.wait treats a negative timeout as 0 */
    }
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    uint32_t w = atomic_load(&s->hdr->ev_word);
    if (w & 1u)
        Py_RETURN_TRUE;
    if (timeout == 0.0)
        Py_RETURN_FALSE;
    int r = wait_word(s, w, timeout < 0 ? INFINITY : mono() + timeout, 0);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* wait_change(word, timeout) -> bool: one slice (at most SLICE) of waiting for ev_word != word. */
static PyObject *Sync_wait_change(Sync *s, PyObject *args)
{
    unsigned long w;
    double timeout;
    if (!PyArg_ParseTuple(args, "kd:wait_change", &w, &timeout))
        return NULL;
    if (check(s) < 0 || not_event(s) < 0)
        return NULL;
    int r = wait_word(s, (uint32_t)w, mono() + (timeout > 0 ? timeout : 0), 1);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* ------------------------------------------------------------------------- */
/* common */

static PyObject *Sync_close(Sync *s, PyObject *unused)
{
    if (s->hdr == NULL)
        Py_RETURN_NONE;
    struct ksync_hdr *h = s->hdr;
    s->closing = 1;
    if (h->kind != KSYNC_EVENT) {
        /* The calling thread holds it: release (fully, for an RLock) so nobody waits on a closed handle. */
        unsigned me = (unsigned)syscall(SYS_gettid);
        while (mutex_tid(h) == me) {
            atomic_store_explicit(&h->holder_pid, 0, memory_order_relaxed);
            if (pthread_mutex_unlock(&h->mutex) != 0)
                break;
            atomic_fetch_add(&h->release_gen, 1);
            if (atomic_load(&h->gen_waiters))
                futex_wake_all(&h->release_gen);
        }
    }
    if (s->busy == 0 && !held_here(h))
        do_unmap(s);
    Py_RETURN_NONE;
}

static PyObject *Sync_info(Sync *s, PyObject *unused)
{
    if (check(s) < 0)
        return NULL;
    struct ksync_hdr *h = s->hdr;
    if (h->kind == KSYNC_EVENT)
        return Py_BuildValue("{sIsIsIsOsI}", "kind", h->kind, "creator_pid", h->creator_pid, "owner_uid",
                             h->owner_uid, "set", (atomic_load(&h->ev_word) & 1u) ? Py_True : Py_False,
                             "generation", atomic_load(&h->ev_word) >> 1);
    return Py_BuildValue("{sIsIsIsIsIsIsI}", "kind", h->kind, "creator_pid", h->creator_pid, "owner_uid",
                         h->owner_uid, "holder_pid", atomic_load(&h->holder_pid), "holder_tid", mutex_tid(h),
                         "recoveries", atomic_load(&h->recoveries), "releases", atomic_load(&h->release_gen));
}

static PyObject *Sync_get_recovered(Sync *s, void *c) { return PyBool_FromLong(s->recovered); }
static PyObject *Sync_get_dead_pid(Sync *s, void *c) { return PyLong_FromUnsignedLong(s->dead_pid); }
static PyObject *Sync_get_mapped(Sync *s, void *c) { return PyBool_FromLong(s->hdr != NULL); }

static PyGetSetDef Sync_getset[] = {
    {"recovered", (getter)Sync_get_recovered, NULL, "the last successful acquire repaired a dead holder's lock", NULL},
    {"dead_pid", (getter)Sync_get_dead_pid, NULL, "pid of the dead holder found by that repair (0 if unknown)", NULL},
    {"mapped", (getter)Sync_get_mapped, NULL, "False once unmapped", NULL},
    {NULL},
};

static PyMethodDef Sync_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Sync_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)Sync_release, METH_NOARGS, "release() (by the thread that acquired)"},
    {"locked", (PyCFunction)Sync_locked, METH_NOARGS, "held by a live thread somewhere"},
    {"owned", (PyCFunction)Sync_owned, METH_NOARGS, "held by the calling thread"},
    {"release_gen", (PyCFunction)Sync_release_gen, METH_NOARGS, "the release counter (for wait_release)"},
    {"wait_release", (PyCFunction)Sync_wait_release, METH_VARARGS,
     "wait_release(gen, timeout) -> bool: one slice of waiting for a release, taking nothing"},
    {"set", (PyCFunction)Sync_set, METH_NOARGS, "set the event, wake every waiter"},
    {"clear", (PyCFunction)Sync_clear, METH_NOARGS, "clear the event"},
    {"is_set", (PyCFunction)Sync_is_set, METH_NOARGS, "is the event set"},
    {"word", (PyCFunction)Sync_word, METH_NOARGS, "the event word: (generation << 1) | is_set"},
    {"wait", (PyCFunction)(void (*)(void))Sync_wait, METH_FASTCALL, "wait(timeout=None) -> bool"},
    {"wait_change", (PyCFunction)Sync_wait_change, METH_VARARGS,
     "wait_change(word, timeout) -> bool: one slice of waiting for the event word to change"},
    {"close", (PyCFunction)Sync_close, METH_NOARGS, "release the mapping (deferred while calls are in flight)"},
    {"info", (PyCFunction)Sync_info, METH_NOARGS, "header fields as a dict"},
    {NULL},
};

static PyTypeObject SyncType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._sync.Sync",
    .tp_basicsize = sizeof(Sync),
    .tp_dealloc = (destructor)Sync_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sync(fd, kind, create, url): a mapped kipc lock / rlock / event",
    .tp_methods = Sync_methods,
    .tp_getset = Sync_getset,
    .tp_init = (initproc)Sync_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *set_errors(PyObject *self, PyObject *args)
{
    PyObject *c, *b;
    if (!PyArg_ParseTuple(args, "OO:_set_errors", &c, &b))
        return NULL;
    Py_INCREF(c);
    Py_INCREF(b);
    Py_XSETREF(E_Closed, c);
    Py_XSETREF(E_Bad, b);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_set_errors", set_errors, METH_VARARGS, "_set_errors(ChannelClosed, BadObject)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._sync", "kipc's named robust locks and events (see _sync.c)", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__sync(void)
{
    if (PyType_Ready(&SyncType) < 0)
        return NULL;
    reset_pid();
    pthread_atfork(NULL, NULL, reset_pid);
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    E_Closed = Py_NewRef(PyExc_EOFError);
    E_Bad = Py_NewRef(PyExc_OSError);
    Py_INCREF(&SyncType);
    PyModule_AddObject(m, "Sync", (PyObject *)&SyncType);
    PyModule_AddObject(m, "MAGIC", PyLong_FromUnsignedLongLong(KSYNC_MAGIC));
    PyModule_AddIntConstant(m, "VERSION", KSYNC_VERSION);
    PyModule_AddIntConstant(m, "SIZE", KSYNC_SIZE);
    PyModule_AddIntConstant(m, "KIND_LOCK", KSYNC_LOCK);
    PyModule_AddIntConstant(m, "KIND_RLOCK", KSYNC_RLOCK);
    PyModule_AddIntConstant(m, "KIND_EVENT", KSYNC_EVENT);
    return m;
}
