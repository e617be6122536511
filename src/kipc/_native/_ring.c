/*
 * kipc._native._ring — the Python binding of the ring (types, buffer protocol, argument
 * parsing, error mapping). The algorithm and its THEORY OF OPERATION are in ring/ring_core.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ring/ring_core.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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


typedef struct {
    PyObject_HEAD
    rc_ring c;             /* the core's part of the handle (ring/ring_core.h) */
    PyObject *url;
    _Atomic long calls;    /* calls in flight on this handle (each may release the GIL) */
    int unmap_pending;     /* unmap when the last call, view and loan are gone */
    _Atomic int unmapped;  /* exactly one ring_unmap_now does the munmap */
    Py_ssize_t exports;    /* live views/loans (GIL-protected) */
    unsigned fork_gen;     /* fork generation this handle's per-process state belongs to */
    PyObject *alloc;       /* recv_into's allocator during its call (borrowed), else NULL */
} Ring;


/* exceptions, replaced by kipc's classes through _setup() */
static PyObject *E_Timeout, *E_WouldBlock, *E_Closed, *E_Bad, *E_Mismatch;
static PyObject *FOREVER;           /* kipc._base's Deadline(None): the hot path compares identity */
static PyObject *S_end, *S_error; /* interned attribute names of a Deadline */
static unsigned fork_gen;           /* bumped in a forked child (pthread_atfork) */
static uint32_t token_serial;


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


/* Raise the exception for state `rc` of operation `op`. A timeout is worded by kipc's
 * Deadline.error (one wording for every transport; WouldBlock for timeout=0): of `dl` when the
 * caller's deadline argument is a Deadline, or of Deadline(secs) when the caller knows its
 * timeout in seconds (secs > 0: the instance fast path); a bare float deadline names none. */
static int raise_state_t(Ring *r, int rc, const char *op, PyObject *dl, double secs)
{
    if (rc == R_TIMEOUT) {
        PyObject *d = NULL;
        if (secs > 0) {
            PyObject *t = PyFloat_FromDouble(secs);
            d = t ? PyObject_CallOneArg((PyObject *)Py_TYPE(FOREVER), t) : NULL;
            Py_XDECREF(t);
        } else if (dl && dl != FOREVER && dl != Py_None && Py_TYPE(dl) == Py_TYPE(FOREVER)) {
            d = Py_NewRef(dl);
        }
        PyObject *what = d ? PyUnicode_FromFormat("%s on %S", op, r->url) : NULL;
        PyObject *exc = what ? PyObject_CallMethodOneArg(d, S_error, what) : NULL;
        Py_XDECREF(what);
        Py_XDECREF(d);
        if (exc && PyExceptionInstance_Check(exc)) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        } else if (!PyErr_Occurred()) {
            PyErr_Format(E_Timeout, "%s on %S timed out", op, r->url);
        }
        Py_XDECREF(exc);
    } else if (rc == R_LOCAL) {
        closed_here(r, op);
    } else if (rc == R_HELD) {
        PyErr_Format(PyExc_RuntimeError, "%s on %S: this thread still holds an unreleased loan or received view; "
                     "release it first", op, r->url);
    } else if (rc == R_MISMATCH) {
        PyObject *start = PyBytes_FromStringAndSize((const char *)r->c.mis_head, r->c.mis_n);
        if (start) {
            PyErr_Format(E_Mismatch, "%s on %S: the message at head is a %llu-byte message starting %R, "
                         "not the kind asked for; it stays in the ring (receive it with recv())", op, r->url,
                         (unsigned long long)r->c.mis_total, start);
            Py_DECREF(start);
        }
    } else if (rc == R_CORRUPT) {
        PyErr_Format(E_Bad, "%s on %S: corrupt shared memory: %s (another process wrote into the ring; "
                     "it is marked broken for every peer)", op, r->url, r->c.why);
    } else if (rc == R_BROKEN || (rc == R_CLOSED && atomic_load(&r->c.hdr->closed) == CLOSED_BROKEN)) {
        if (is_broken(&r->c) && atomic_load(&slot_broken[r->c.slot]) >= (uintptr_t)r->c.hdr + HDR_SIZE) {
            /* our header page is still the shared one: tell the other peers, wake them */
            atomic_store(&r->c.hdr->closed, CLOSED_BROKEN);
            futex_wake_all(lo32(&r->c.hdr->tail));
            futex_wake_all(lo32(&r->c.hdr->head));
            futex_wake_all(lo32(&r->c.hdr->claim));
            futex_wake_all(&r->c.hdr->unfinished);
        }
        if (is_broken(&r->c))
            PyErr_Format(E_Bad, "%s on %S: its shared memory object was truncated by another process or "
                         "/dev/shm ran out of space (the ring is unusable)", op, r->url);
        else
            PyErr_Format(E_Bad, "%s on %S: marked broken by a peer (its shared memory was truncated or "
                         "corrupted; the ring is unusable)", op, r->url);
    } else if (rc == R_CLOSED) {
        PyErr_Format(E_Closed, "%s on %S: the channel was closed by its creator", op, r->url);
    }
    return -1;
}

static inline int raise_state(Ring *r, int rc, const char *op, PyObject *dl)
{
    return raise_state_t(r, rc, op, dl, 0.0);
}

/* ------------------------------------------------------------------------- */
/* in-flight calls and the mapping (see THEORY: close from any thread) */

static void ring_unmap_now(Ring *r);

/* In a forked child: the parent's in-flight calls and claim are not ours. */
static void after_fork(Ring *r)
{
    r->fork_gen = fork_gen;
    atomic_store(&r->calls, 0);
    /* a copy of the parent's claimed partial or half-written message: the parent's to finish */
    rc_drop_partial(&r->c);
    rc_drop_pdata(&r->c);
    r->c.filled = r->c.ptotal = 0;
    r->c.pid = (uint32_t)getpid();
    r->c.start = 0;
    r->c.token = ((uint64_t)r->c.pid << 32) | ++token_serial;
    r->c.fail_valid = 0;
}

/* `calls` changes only with the GIL held (enter/leave, wait, unmap, the views' finish), so a
 * plain load and store suffice: the GIL's hand-over orders them between threads, and a lock-
 * prefixed add per call would cost more than the rest of enter(). */
static inline void calls_add(Ring *r, long d)
{
    atomic_store_explicit(&r->calls, atomic_load_explicit(&r->calls, memory_order_relaxed) + d, memory_order_relaxed);
}

static inline void leave(Ring *r)
{
    calls_add(r, -1);
    if (atomic_load_explicit(&r->calls, memory_order_relaxed) == 0 && r->unmap_pending && r->exports == 0)
        ring_unmap_now(r); /* the last one out unmaps */
}

/* Every call that touches the mapping brackets itself with enter/leave (GIL held at both). */
static inline int enter(Ring *r, const char *op)
{
    if (r->fork_gen != fork_gen)
        after_fork(r);
    calls_add(r, 1); /* before the closing load; unmap() runs under the GIL too */
    if (atomic_load_explicit(&r->c.closing, memory_order_relaxed) || r->c.hdr == NULL) {
        leave(r);
        closed_here(r, op);
        return -1;
    }
    /* load first: if the header page vanished, this load is what marks the slot broken */
    uint32_t closed = atomic_load_explicit(&r->c.hdr->closed, memory_order_relaxed);
    if (closed == CLOSED_BROKEN || is_broken(&r->c)) {
        raise_state(r, R_BROKEN, op, NULL);
        leave(r);
        return -1;
    }
    if (closed > CLOSED_BROKEN) {
        raise_state(r, corrupt(&r->c, "closed word %u (0, 1 or 2 expected)", closed), op, NULL);
        leave(r);
        return -1;
    }
    return 0;
}


/* ------------------------------------------------------------------------- */
/* the binding's side of the core's produce / consume loops (ring_core.c) */

static PyObject *RingView_new(Ring *r, unsigned char *ptr, Py_ssize_t len, uint64_t new_head);
static void RingView_drop(PyObject *v);

/* One message from Python buffers (obj: try_send's data object, for a resumed fragmented one). */
static int produce(Ring *r, Py_buffer *bufs, int n, uint64_t total, double deadline, uint64_t max_items, int nb,
                   PyObject *obj)
{
    rc_part parts[64];
    for (int i = 0; i < n; i++) {
        parts[i].buf = bufs[i].buf;
        parts[i].len = (uint64_t)bufs[i].len;
    }
    return rc_produce(&r->c, parts, n, total, deadline, max_items, nb, obj);
}

/* Receive one message as bytes, or a view (want_view 1; 2: only for messages >= VIEW_MIN).
 * NULL with *rcp = R_EMPTY (nb: nothing now), R_ERR (exception set) or a state. */
static PyObject *consume(Ring *r, double deadline, int want_view, int nb, const char *ex, Py_ssize_t exn, int *rcp)
{
    rc_msg m;
    int rc = rc_consume(&r->c, deadline, nb, ex, (size_t)exn, &m);
    if (rc == R_WHOLE) {
        if (want_view == 1 || (want_view == 2 && m.len >= VIEW_MIN)) {
            /* a memoryview over a RingView: keeps cons_lock (and the mapping) until released */
            PyObject *v = RingView_new(r, m.src, (Py_ssize_t)m.len, m.next), *mv = NULL;
            if (v && !(mv = PyMemoryView_FromObject(v)))
                RingView_drop(v); /* unclaimed, not consumed */
            Py_XDECREF(v);
            *rcp = mv ? OK : R_ERR; /* the lock was released */
            return mv;
        }
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)m.len);
        if (!out) {
            unlock_ring(&r->c, 0); /* left in place: nothing lost */
            *rcp = R_ERR;
            return NULL;
        }
        rc_copy(PyBytes_AS_STRING(out), m.src, m.len);
        if ((*rcp = rc_take_whole(&r->c, m.next)) != OK) {
            Py_DECREF(out);
            return NULL;
        }
        return out;
    }
    *rcp = rc;
    if (rc != OK)
        return NULL;
    PyObject *p = m.msg; /* a reassembled message: bytes (msg_alloc) */
    if (want_view) {
        PyObject *mv = PyMemoryView_FromObject(p);
        Py_DECREF(p);
        if (!mv)
            *rcp = R_ERR;
        return mv;
    }
    return p;
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
    int keep; /* keep(): releasing gives the message back instead of consuming it */
} RingView;

static PyTypeObject RingViewType;

static void ring_export_done(Ring *r);

static PyObject *RingView_new(Ring *r, unsigned char *ptr, Py_ssize_t len, uint64_t new_head)
{
    RingView *v = PyObject_New(RingView, &RingViewType);
    if (!v) {
        unlock_ring(&r->c, 0);
        return NULL;
    }
    Py_INCREF(r);
    v->ring = r;
    v->ptr = ptr;
    v->len = len;
    v->new_head = new_head;
    v->exports = 0;
    v->done = 0;
    v->keep = 0;
    r->exports++; /* the mapping stays until the view is released, even after close() */
    return (PyObject *)v;
}

static void RingView_finish(RingView *v)
{
    if (v->done)
        return;
    v->done = 1;
    if (!v->keep) /* keep(): the message stays at head for the next recv */
        advance(v->ring->c.hdr, v->new_head, 1);
    unlock_ring(&v->ring->c, 0);
    ring_export_done(v->ring);
}

/* Give a view up without consuming its message (the memoryview around it failed). */
static void RingView_drop(PyObject *o)
{
    RingView *v = (RingView *)o;
    if (v->done)
        return;
    v->done = 1;
    unlock_ring(&v->ring->c, 0);
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

static PyObject *RingView_keep(RingView *v, PyObject *unused)
{
    v->keep = 1;
    Py_RETURN_NONE;
}

static PyMethodDef RingView_methods[] = {
    {"keep", (PyCFunction)RingView_keep, METH_NOARGS,
     "keep(): when the last export is released, leave the message in the ring (not consumed)"},
    {NULL},
};

static PyBufferProcs RingView_as_buffer = {(getbufferproc)RingView_getbuffer, (releasebufferproc)RingView_releasebuffer};

static PyTypeObject RingViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._ring.RingView",
    .tp_basicsize = sizeof(RingView),
    .tp_dealloc = (destructor)RingView_dealloc,
    .tp_as_buffer = &RingView_as_buffer,
    .tp_methods = RingView_methods,
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
    uint64_t tail; /* validated at loan time (check_prod): commit publishes from it */
    Py_ssize_t exports;
    int done;
} RingLoan;

static PyTypeObject RingLoanType;

/* Commit or abort: the producer lock goes now. Buffers exported from the loan (a numpy array
 * over it) may outlive this; the mapping stays until the loan object itself is gone (dealloc),
 * and what they write after the commit lands in a published message (documented: do not). */
static void RingLoan_end(RingLoan *l)
{
    l->done = 1;
    unlock_ring(&l->ring->c, 1);
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
    Ring *r = l->ring;
    if (closing(&r->c)) { /* the handle was closed while the loan was open: publish nothing */
        RingLoan_end(l);
        closed_here(r, "commit");
        return NULL;
    }
    struct ring_hdr *h = r->c.hdr;
    struct rec *rec = (struct rec *)(l->ptr - REC_HDR);
    rec->len = (uint32_t)n;
    if (is_broken(&r->c)) {
        raise_state(r, R_BROKEN, "commit", NULL);
        RingLoan_end(l);
        return NULL;
    }
    rec->total = (uint64_t)n;
    publish(h, l->tail + l->pad + rec_size((uint64_t)n), atomic_load_explicit(&h->msgs_in, memory_order_relaxed) + 1);
    RingLoan_end(l);
    Py_RETURN_NONE;
}

static PyObject *RingLoan_abort(RingLoan *l, PyObject *unused)
{
    if (!l->done)
        RingLoan_end(l);
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
    ring_export_done(l->ring); /* no buffer of it is left: the mapping may go */
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
    if (r->c.hdr && !atomic_exchange(&r->unmapped, 1)) {
        /* closed mid-message: drop the claim (the rest is skipped, THEORY); a half-written
         * message: make the claim stale, the next peer ends it */
        rc_forget(&r->c);
        if (r->c.slot >= 0)
            slot_unregister(r->c.slot); /* before munmap: the handler must not claim a reused range */
        r->c.slot = -1;
        munmap(r->c.hdr, r->c.map_size);
        r->c.hdr = NULL;
        r->c.data = NULL;
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
    if (r->c.hdr) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    Py_INCREF(url);
    Py_XSETREF(r->url, url);
    r->c.slot = -1;
    r->c.spin = spin < 0 ? 0 : spin;
    r->fork_gen = fork_gen;
    r->c.pid = (uint32_t)getpid();
    r->c.start = owner_pid == r->c.pid ? owner_start : 0;
    r->c.token = ((uint64_t)r->c.pid << 32) | ++token_serial;
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
    const char *why = rc_header_init(base, (size_t)st.st_size, create, capacity, owner_pid, owner_start, start);
    if (why) {
        munmap(base, (size_t)st.st_size);
        if (create) {
            PyErr_Format(PyExc_OSError, "ring %S: %s", url, why);
        } else {
            PyErr_Format(E_Bad, "ring %S: %s (not a kipc ring v%u, or corrupted)", url, why, RING_VERSION);
        }
        return -1;
    }
    rc_bind(&r->c, base, (size_t)st.st_size);
    return 0;
}

static void Ring_dealloc(Ring *r)
{
    if (r->fork_gen != fork_gen)
        after_fork(r);
    ring_unmap_now(r); /* no call can be in flight: each holds a reference */
    rc_drop_partial(&r->c);
    rc_drop_pdata(&r->c);
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

/* One blocking send of `obj` (a buffer) by `deadline`; dl/secs word a timeout (raise_state_t). */
static PyObject *send_one(Ring *r, PyObject *obj, double deadline, PyObject *dl, double secs, uint64_t max_items)
{
    if (enter(r, "send") < 0)
        return NULL;
    Py_buffer b;
    if (get_part(obj, &b) < 0) {
        leave(r);
        return NULL;
    }
    int rc = produce(r, &b, 1, (uint64_t)b.len, deadline, max_items, 0, NULL);
    release_part(&b);
    if (rc != OK && rc != R_ERR)
        raise_state_t(r, rc, "send", dl, secs);
    leave(r);
    if (rc != OK)
        return NULL;
    Py_RETURN_NONE;
}

/* One blocking recv by `deadline` (view, expect: as Ring_recv's); dl/secs word a timeout. */
static PyObject *recv_one(Ring *r, double deadline, PyObject *dl, double secs, int view, const char *ex, Py_ssize_t exn)
{
    if (enter(r, "recv") < 0)
        return NULL;
    int rc = OK;
    PyObject *got = consume(r, deadline, view, 0, ex, exn, &rc);
    if (!got && rc != R_ERR)
        raise_state_t(r, rc, "recv", dl, secs);
    leave(r);
    return got;
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
    return send_one(r, args[0], deadline, dl, 0.0, max_items);
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
    int rc = produce(r, &b, 1, (uint64_t)b.len, 0.0, max_items, 1, args[0]);
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
    rc = produce(r, bufs, (int)n, total, deadline, max_items, 0, NULL);
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
    if (nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "recv(deadline=FOREVER, knobs=None, view=0, expect=None)");
        return NULL;
    }
    const char *ex = NULL;
    Py_ssize_t exn = 0;
    if (nargs > 3 && args[3] != Py_None) {
        if (!PyBytes_Check(args[3]) || PyBytes_GET_SIZE(args[3]) > 64) {
            PyErr_SetString(PyExc_TypeError, "recv: expect must be bytes (at most 64) or None");
            return NULL;
        }
        ex = PyBytes_AS_STRING(args[3]); /* args[3] is borrowed for the whole call */
        exn = PyBytes_GET_SIZE(args[3]);
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
    return recv_one(r, deadline, dl, 0.0, view, ex, exn);
}

/* recv_into(alloc, deadline=FOREVER, view=0): recv, but a fragmented message is reassembled
 * into alloc(total) (a writable buffer of exactly total bytes nobody else holds: a reusable,
 * already faulted-in block instead of a fresh bytes object) and that object is returned (as a
 * memoryview when view). A single-record message comes back as recv(view=view) returns it. */
static PyObject *Ring_recv_into(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3 || !PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "recv_into(alloc, deadline=FOREVER, view=0): alloc must be callable");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    if (dl && dl != FOREVER && get_deadline(dl, &deadline) < 0)
        return NULL;
    int view = 0;
    if (nargs > 2) {
        long v = PyLong_AsLong(args[2]);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        view = v == 0 ? 0 : v == 2 ? 2 : 1;
    }
    if (enter(r, "recv") < 0)
        return NULL;
    int rc = OK;
    r->alloc = args[0]; /* borrowed for this call; consume only calls it under cons_lock */
    PyObject *got = consume(r, deadline, view, 0, NULL, 0, &rc);
    r->alloc = NULL;
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
    PyObject *got = consume(r, 0.0, view, 1, NULL, 0, &rc);
    if (!got && rc != R_ERR && rc != R_EMPTY)
        raise_state(r, rc, "recv", NULL);
    leave(r);
    if (!got && rc == R_EMPTY)
        Py_RETURN_NONE;
    return got;
}

/* send_many(iterable, deadline=FOREVER, max_items=0) -> int: each item one message, in order,
 * all within one deadline; the same guarantees as send() per message. On an error the
 * messages before it were sent: the exception carries .sent (their number). */
static PyObject *Ring_send_many(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "send_many(iterable, deadline=FOREVER, max_items=0)");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    uint64_t max_items = 0;
    if ((dl && dl != FOREVER && get_deadline(dl, &deadline) < 0) || (nargs > 2 && get_u64(args[2], &max_items) < 0))
        return NULL;
    PyObject *it = PyObject_GetIter(args[0]);
    if (!it)
        return NULL;
    if (enter(r, "send") < 0) {
        Py_DECREF(it);
        return NULL;
    }
    Py_ssize_t sent = 0;
    int rc = OK;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        Py_buffer b;
        if (get_part(item, &b) < 0) {
            Py_DECREF(item);
            rc = R_ERR;
            break;
        }
        rc = produce(r, &b, 1, (uint64_t)b.len, deadline, max_items, 0, NULL);
        release_part(&b);
        Py_DECREF(item);
        if (rc != OK) {
            if (rc != R_ERR)
                raise_state(r, rc, "send", dl);
            break;
        }
        sent++;
    }
    Py_DECREF(it);
    leave(r);
    if (rc != OK || PyErr_Occurred()) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        PyObject *n = PyLong_FromSsize_t(sent);
        if (ev && n && PyObject_SetAttrString(ev, "sent", n) < 0)
            PyErr_Clear(); /* an exception type without a __dict__: no count */
        Py_XDECREF(n);
        PyErr_Restore(et, ev, tb);
        return NULL;
    }
    return PyLong_FromSsize_t(sent);
}

/* recv_many(max_n, deadline=FOREVER) -> list: waits for the first message like recv(), then
 * takes up to max_n - 1 more that are there now (never waits for them). An error after the
 * first message ends the batch without raising (the next call meets it again): nothing taken
 * is dropped. */
static PyObject *Ring_recv_many(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "recv_many(max_n, deadline=FOREVER)");
        return NULL;
    }
    Py_ssize_t max_n = PyLong_AsSsize_t(args[0]);
    if (max_n == -1 && PyErr_Occurred())
        return NULL;
    if (max_n < 1) {
        PyErr_SetString(PyExc_ValueError, "recv_many: max_n must be >= 1");
        return NULL;
    }
    double deadline = INFINITY;
    PyObject *dl = nargs > 1 ? args[1] : NULL;
    if (dl && dl != FOREVER && get_deadline(dl, &deadline) < 0)
        return NULL;
    if (enter(r, "recv") < 0)
        return NULL;
    int rc = OK;
    PyObject *got = consume(r, deadline, 0, 0, NULL, 0, &rc);
    if (!got) {
        if (rc != R_ERR)
            raise_state(r, rc, "recv", dl);
        leave(r);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (!out || PyList_Append(out, got) < 0) {
        /* cannot hand it out: this is the one message lost, as a MemoryError would lose it in recv */
        Py_DECREF(got);
        Py_XDECREF(out);
        leave(r);
        return NULL;
    }
    Py_DECREF(got);
    while (PyList_GET_SIZE(out) < max_n) {
        got = consume(r, 0.0, 0, 1, NULL, 0, &rc);
        if (!got) {
            if (rc == R_ERR && PyErr_Occurred()) {
                int interrupted = PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
                PyErr_Clear(); /* the next call meets it again; what we hold is delivered */
                if (interrupted)
                    PyErr_SetInterrupt(); /* ... and Ctrl-C is raised at the next check */
            }
            break;
        }
        int bad = PyList_Append(out, got);
        Py_DECREF(got);
        if (bad < 0) {
            PyErr_Clear();
            break;
        }
    }
    leave(r);
    return out;
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
    calls_add(r, 1);
    if (closing(&r->c) || r->c.hdr == NULL) {
        leave(r);
        Py_RETURN_NONE; /* the caller's closed check reports it */
    }
    int rc = op ? rc_wait_send(&r->c, deadline) : rc_wait_recv(&r->c, deadline);
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
    if (closing(&r->c) || r->c.hdr == NULL)
        Py_RETURN_TRUE;
    if (enter(r, op ? "send" : "recv") < 0) {
        PyErr_Clear();
        Py_RETURN_TRUE; /* broken: the attempt raises */
    }
    int ready = rc_ready(&r->c, op);
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
    if (n < 0 || (uint64_t)n > r->c.frag_max) {
        PyErr_Format(PyExc_ValueError, "loan of %zd bytes: the limit for this ring is %llu bytes", n,
                     (unsigned long long)r->c.frag_max);
        leave(r);
        return NULL;
    }
    uint64_t pad = 0;
    int rc = rc_reserve(&r->c, rec_size((uint64_t)n), 0, deadline, 0, &pad);
    if (rc != OK) {
        if (rc != R_ERR)
            raise_state(r, rc, "loan", dl);
        leave(r);
        return NULL;
    }
    RingLoan *l = PyObject_New(RingLoan, &RingLoanType);
    if (!l) {
        unlock_ring(&r->c, 1);
        leave(r);
        return NULL;
    }
    Py_INCREF(r);
    l->ring = r;
    l->ptr = place(&r->c, pad, (uint64_t)n, F_FIRST | F_LAST, (uint64_t)n);
    l->size = n;
    l->pad = pad;
    l->tail = r->c.vtail;
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
    uint64_t out = atomic_load(&r->c.hdr->msgs_out), in = atomic_load(&r->c.hdr->msgs_in);
    leave(r);
    return PyLong_FromUnsignedLongLong((int64_t)(in - out) > 0 ? in - out : 0); /* modular: counters wrap */
}

static PyObject *Ring_used(Ring *r, PyObject *unused)
{
    if (enter(r, "used") < 0)
        return NULL;
    uint64_t head = atomic_load(&r->c.hdr->head), tail = atomic_load(&r->c.hdr->tail);
    leave(r);
    return PyLong_FromUnsignedLongLong(tail - head);
}


static PyObject *Ring_mark_closed(Ring *r, PyObject *unused)
{
    if (r->c.hdr == NULL) {
        closed_here(r, "close");
        return NULL;
    }
    if (is_broken(&r->c))
        Py_RETURN_NONE; /* closing a truncated ring must work: its peers were told (closed = 2) */
    /* Only close() calls this, and interrupt() follows: mark this handle closing *first*, so a
     * call of ours woken by the closed word below reports "closed by this process" even when it
     * gets the GIL before interrupt() has run (a test hit that window under load) */
    atomic_store(&r->c.closing, 1);
    atomic_store(&r->c.hdr->closed, 1);
    wake_all(r->c.hdr);
    Py_RETURN_NONE;
}

/* interrupt(): closed by this process: every call in flight on this handle returns. */
static PyObject *Ring_interrupt(Ring *r, PyObject *unused)
{
    atomic_store(&r->c.closing, 1);
    if (r->c.hdr && !is_broken(&r->c))
        wake_all(r->c.hdr); /* spurious for other processes' waiters: they re-check */
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
    uint32_t now = atomic_fetch_add(&r->c.hdr->attach_pending, (uint32_t)d) + (uint32_t)d;
    leave(r);
    return PyLong_FromUnsignedLong(now);
}

static PyObject *Ring_task_add(Ring *r, PyObject *arg)
{
    long d = PyLong_AsLong(arg);
    if ((d == -1 && PyErr_Occurred()) || enter(r, "task_add") < 0)
        return NULL;
    struct ring_hdr *h = r->c.hdr;
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
    struct ring_hdr *h = r->c.hdr;
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
    struct ring_hdr *h = r->c.hdr;
    PyObject *res = NULL;
    for (;;) {
        uint32_t cur = atomic_load(&h->unfinished);
        if (cur == 0) {
            res = Py_NewRef(Py_True);
            break;
        }
        int rc = wait_word(&r->c, (uint32_t *)&h->unfinished, cur, &h->join_waiters, deadline);
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
    struct ring_hdr *h = r->c.hdr;
    PyObject *d = PyDict_New();
    if (!d || put_u64(d, "repairs", atomic_load(&h->repairs)) || put_u64(d, "capacity", h->capacity) ||
        put_u64(d, "frag_max", r->c.frag_max) || put_u64(d, "owner_uid", h->owner_uid) ||
        put_u64(d, "owner_pid", h->owner_pid) || put_u64(d, "owner_start", h->owner_start) ||
        put_u64(d, "head", atomic_load(&h->head)) || put_u64(d, "tail", atomic_load(&h->tail)) ||
        /* msgs_out before msgs_in: a consumer between the two loads cannot make the depth negative */
        put_u64(d, "msgs_out", atomic_load(&h->msgs_out)) || put_u64(d, "msgs_in", atomic_load(&h->msgs_in)) ||
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

static PyObject *Ring_get_spin(Ring *r, void *c) { return PyFloat_FromDouble(r->c.spin); }

static int Ring_set_spin(Ring *r, PyObject *v, void *c)
{
    double s = v ? PyFloat_AsDouble(v) : -1;
    if (s == -1 && PyErr_Occurred())
        return -1;
    r->c.spin = s < 0 ? 0 : s;
    return 0;
}

static PyObject *Ring_get_frag_max(Ring *r, void *c) { return PyLong_FromUnsignedLongLong(r->c.frag_max); }
static PyObject *Ring_get_capacity(Ring *r, void *c) { return PyLong_FromUnsignedLongLong(r->c.cap); }
static PyObject *Ring_get_mapped(Ring *r, void *c) { return PyBool_FromLong(r->c.hdr != NULL); }

static PyGetSetDef Ring_getset[] = {
    {"spin", (getter)Ring_get_spin, (setter)Ring_set_spin, "seconds to spin before sleeping on the futex", NULL},
    {"frag_max", (getter)Ring_get_frag_max, NULL, "largest payload stored as one record", NULL},
    {"capacity", (getter)Ring_get_capacity, NULL, "data bytes", NULL},
    {"mapped", (getter)Ring_get_mapped, NULL, "False once unmapped", NULL},
    {NULL},
};

/* ------------------------------------------------------------------------- */
/* Fast: a channel's send or recv for its hot path, installed on the channel instance while that
 * path holds (Channel._fast_calls: the default codec, open). It does the whole call here, with
 * no Python frame: send(bytes) or recv(), no keyword but timeout=, which is None or a plain
 * positive float/int up to threading.TIMEOUT_MAX. Any other call goes unchanged to the class's
 * function (Channel.send / Channel.recv), which checks and words everything else: what the fast
 * path accepts, it does exactly as that function would. The channel is held weakly (it holds
 * this object: no cycle, so a dropped channel is still freed at once). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Ring *ring;
    PyObject *channel; /* weak reference */
    PyObject *slow;    /* Channel.send or Channel.recv */
    uint64_t limit;    /* send: longer messages take the slow path (its MessageTooLarge) */
    double tmax;       /* the largest timeout the fast path takes */
    int is_send;
} Fast;

static PyObject *S_timeout_kw;

#if PY_VERSION_HEX < 0x030D0000 /* PyWeakref_GetRef is 3.13's; PyWeakref_GetObject is gone in 3.15 */
static int PyWeakref_GetRef(PyObject *ref, PyObject **pobj)
{
    PyObject *o = PyWeakref_GetObject(ref); /* borrowed */
    *pobj = o && o != Py_None ? Py_NewRef(o) : NULL;
    return o ? (*pobj != NULL) : -1;
}
#endif

static PyObject *Fast_slow(Fast *f, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *ch;
    if (PyWeakref_GetRef(f->channel, &ch) < 0)
        return NULL;
    if (ch == NULL) { /* its finalizer closed it */
        closed_here(f->ring, f->is_send ? "send" : "recv");
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **stack = n + 1 <= 8 ? small : PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
    if (!stack) {
        Py_DECREF(ch);
        return PyErr_NoMemory();
    }
    stack[0] = ch;
    memcpy(stack + 1, args, (size_t)n * sizeof(PyObject *));
    PyObject *out = PyObject_Vectorcall(f->slow, stack, (size_t)nargs + 1, kwnames);
    Py_DECREF(ch);
    if (stack != small)
        PyMem_Free(stack);
    return out;
}

static PyObject *Fast_call(Fast *f, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout = NULL;
    if (kwnames) {
        if (PyTuple_GET_SIZE(kwnames) != 1)
            goto slow;
        PyObject *k = PyTuple_GET_ITEM(kwnames, 0);
        if (k != S_timeout_kw && PyUnicode_Compare(k, S_timeout_kw) != 0)
            goto slow;
        timeout = args[nargs];
    }
    if (f->is_send ? nargs != 1 || !PyBytes_CheckExact(args[0]) || (uint64_t)PyBytes_GET_SIZE(args[0]) > f->limit
                   : nargs != 0)
        goto slow;
    double deadline = INFINITY, secs = 0.0;
    if (timeout && timeout != Py_None) {
        if (PyFloat_CheckExact(timeout)) {
            secs = PyFloat_AS_DOUBLE(timeout);
        } else if (PyLong_CheckExact(timeout)) {
            int overflow;
            long v = PyLong_AsLongAndOverflow(timeout, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                goto slow;
            }
            secs = (double)v;
        } else {
            goto slow;
        }
        if (!(secs > 0 && secs <= f->tmax)) /* 0, negatives, NaN, absurd values: the slow path's errors */
            goto slow;
        deadline = mono() + secs;
    }
    Ring *r = f->ring;
    return f->is_send ? send_one(r, args[0], deadline, NULL, secs, 0) : recv_one(r, deadline, NULL, secs, 0, NULL, 0);
slow:
    return Fast_slow(f, args, nargsf, kwnames);
}

static void Fast_dealloc(Fast *f)
{
    Py_XDECREF(f->ring);
    Py_XDECREF(f->channel);
    Py_XDECREF(f->slow);
    PyObject_Free(f);
}

/* Introspection as a bound method of the channel: help(), inspect.signature (via __wrapped__). */
static PyObject *Fast_wrapped(Fast *f, void *c)
{
    PyObject *ch;
    if (PyWeakref_GetRef(f->channel, &ch) < 0)
        return NULL;
    if (ch == NULL)
        return Py_NewRef(f->slow);
    PyObject *m = PyMethod_New(f->slow, ch);
    Py_DECREF(ch);
    return m;
}

static PyObject *Fast_self(Fast *f, void *c)
{
    PyObject *ch;
    if (PyWeakref_GetRef(f->channel, &ch) < 0)
        return NULL;
    return ch ? ch : Py_NewRef(Py_None);
}
static PyObject *Fast_attr(Fast *f, void *name) { return PyObject_GetAttrString(f->slow, (const char *)name); }

static PyGetSetDef Fast_getset[] = {
    {"__wrapped__", (getter)Fast_wrapped, NULL, "the method this call stands for", NULL},
    {"__self__", (getter)Fast_self, NULL, "the channel (None once it is gone)", NULL},
    {"__doc__", (getter)Fast_attr, NULL, NULL, "__doc__"},
    {"__name__", (getter)Fast_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)Fast_attr, NULL, NULL, "__qualname__"},
    {NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._ring.Fast",
    .tp_basicsize = sizeof(Fast),
    .tp_dealloc = (destructor)Fast_dealloc,
    .tp_vectorcall_offset = offsetof(Fast, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_getset = Fast_getset,
};

static Fast *fast_new(Ring *r, PyObject *wr, PyObject *slow, uint64_t limit, double tmax, int is_send)
{
    Fast *f = PyObject_New(Fast, &FastType);
    if (!f)
        return NULL;
    f->vectorcall = (vectorcallfunc)Fast_call;
    f->ring = (Ring *)Py_NewRef(r);
    f->channel = Py_NewRef(wr);
    f->slow = Py_NewRef(slow);
    f->limit = limit;
    f->tmax = tmax;
    f->is_send = is_send;
    return f;
}

/* fast(channel, send, recv, limit, tmax) -> (send, recv): Fast objects for the channel's hot
 * path; send/recv are the class's functions they hand other calls to; limit None = no limit. */
static PyObject *Ring_fast(Ring *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fast(channel, send, recv, limit, tmax)");
        return NULL;
    }
    uint64_t limit = UINT64_MAX;
    if (args[3] != Py_None && get_u64(args[3], &limit) < 0)
        return NULL;
    double tmax = PyFloat_AsDouble(args[4]);
    if (tmax == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *wr = PyWeakref_NewRef(args[0], NULL);
    if (!wr)
        return NULL;
    Fast *s = fast_new(r, wr, args[1], limit, tmax, 1), *v = s ? fast_new(r, wr, args[2], limit, tmax, 0) : NULL;
    Py_DECREF(wr);
    if (!v) {
        Py_XDECREF(s);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, (PyObject *)s, (PyObject *)v);
    Py_DECREF(s);
    Py_DECREF(v);
    return out;
}

#define FAST(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef Ring_methods[] = {
    {"send", FAST(Ring_send), "send(data, deadline=FOREVER, knobs=None, max_items=0): blocking send"},
    {"send_many", FAST(Ring_send_many),
     "send_many(iterable, deadline=FOREVER, max_items=0) -> int: each item one message (exception .sent on error)"},
    {"recv_many", FAST(Ring_recv_many),
     "recv_many(max_n, deadline=FOREVER) -> list: the first message waited for, then what is there, up to max_n"},
    {"try_send", FAST(Ring_try_send), "try_send(data, knobs=None, max_items=0) -> bool: False when no room now"},
    {"sendv", FAST(Ring_sendv), "sendv(parts, deadline=FOREVER, max_items=0): the parts as one message"},
    {"recv", FAST(Ring_recv),
     "recv(deadline=FOREVER, knobs=None, view=0, expect=None): view 1 = RingView, 2 = RingView only for messages "
     ">= 16 KiB; expect: bytes the message must start with, else it stays in the ring (ProtocolError)"},
    {"recv_into", FAST(Ring_recv_into),
     "recv_into(alloc, deadline=FOREVER, view=0): recv; a fragmented message goes into alloc(total)"},
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
    {"fast", FAST(Ring_fast), "fast(channel, send, recv, limit, tmax) -> (send, recv): the channel's hot path"},
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
    PyObject *t, *w, *c, *b, *f, *m = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO|O:_setup", &t, &w, &c, &b, &f, &m))
        return NULL;
    if (m)
        Py_XSETREF(E_Mismatch, Py_NewRef(m));
    Py_XSETREF(E_Timeout, Py_NewRef(t));
    Py_XSETREF(E_WouldBlock, Py_NewRef(w));
    Py_XSETREF(E_Closed, Py_NewRef(c));
    Py_XSETREF(E_Bad, Py_NewRef(b));
    Py_XSETREF(FOREVER, Py_NewRef(f));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", setup, METH_VARARGS,
     "_setup(Timeout, WouldBlock, ChannelClosed, BadObject, FOREVER, ProtocolError=ValueError): kipc's errors "
     "and its Deadline(None)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._ring", "kipc's shared-memory ring (see the theory of operation in _ring.c)",
    -1, module_methods,
};

static void *gil_release(void) { return PyEval_SaveThread(); }
static void gil_reacquire(void *ts) { PyEval_RestoreThread((PyThreadState *)ts); }
static int py_interrupted(void) { return PyErr_CheckSignals() < 0; }
/* (The Ring is the handle's container: ((Ring *)((char *)c - offsetof(Ring, c))).) */
/* A fragmented message of `total` bytes is reassembled into a new bytes object or (recv_into)
 * what the caller's allocator returns: a writable buffer of exactly `total` bytes that only this
 * handle holds, so its address is stable while the core keeps the object. */
static void *py_msg_alloc(rc_ring *c, uint64_t total, unsigned char **bytes)
{
    if (total > (uint64_t)PY_SSIZE_T_MAX - 64) {
        PyErr_NoMemory();
        return NULL;
    }
    Ring *r = (Ring *)((char *)c - offsetof(Ring, c));
    if (!r->alloc) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (b)
            *bytes = (unsigned char *)PyBytes_AS_STRING(b);
        return b;
    }
    /* vectorcall, no argument tuple: a C allocator (kipc's) then allocates nothing GC-tracked
     * here, so no collection (no finalizer, no Python code) runs under cons_lock */
    PyObject *size = PyLong_FromUnsignedLongLong((unsigned long long)total);
    if (!size)
        return NULL;
    PyObject *buf = PyObject_Vectorcall(r->alloc, &size, 1, NULL);
    Py_DECREF(size);
    if (!buf)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    unsigned char *p = b.buf;
    Py_ssize_t n = b.len;
    PyBuffer_Release(&b);
    if ((uint64_t)n != total) {
        Py_DECREF(buf);
        PyErr_Format(PyExc_ValueError, "recv_into: the allocator gave %zd bytes for a message of %llu", n,
                     (unsigned long long)total);
        return NULL;
    }
    *bytes = p;
    return buf;
}
static void *py_obj_keep(void *o) { return Py_NewRef((PyObject *)o); }
static void py_obj_drop(void *o) { Py_DECREF((PyObject *)o); }

PyMODINIT_FUNC PyInit__ring(void)
{
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&RingViewType) < 0 || PyType_Ready(&RingLoanType) < 0 ||
        PyType_Ready(&FastType) < 0)
        return NULL;
    S_end = PyUnicode_InternFromString("end");
    S_error = PyUnicode_InternFromString("error");
    S_timeout_kw = PyUnicode_InternFromString("timeout");
    if (!S_end || !S_error || !S_timeout_kw)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    static int atfork_done;
    if (!atfork_done++)
        pthread_atfork(NULL, NULL, atfork_child);
    rc_rt.release = gil_release; /* the core's waits and big copies let other threads run */
    rc_rt.reacquire = gil_reacquire;
    rc_rt.interrupted = py_interrupted;
    rc_rt.msg_alloc = py_msg_alloc; /* reassembled messages are bytes; try_send data is kept */
    rc_rt.obj_keep = py_obj_keep;
    rc_rt.obj_drop = py_obj_drop;
    rc_process_init();
    E_Timeout = Py_NewRef(PyExc_TimeoutError);
    E_WouldBlock = Py_NewRef(PyExc_BlockingIOError);
    E_Closed = Py_NewRef(PyExc_EOFError);
    E_Bad = Py_NewRef(PyExc_OSError);
    E_Mismatch = Py_NewRef(PyExc_ValueError);
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
    /* LAYOUT: header field -> (offset, size), for tools and the hostile-peer tests */
    PyObject *lay = PyDict_New();
#define FIELD(f)                                                                                   \
    do {                                                                                           \
        PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)offsetof(struct ring_hdr, f),            \
                                    (Py_ssize_t)sizeof(((struct ring_hdr *)0)->f));               \
        if (!t || PyDict_SetItemString(lay, #f, t) < 0) {                                          \
            Py_XDECREF(t);                                                                         \
            Py_DECREF(lay);                                                                        \
            Py_DECREF(m);                                                                          \
            return NULL;                                                                           \
        }                                                                                          \
        Py_DECREF(t);                                                                              \
    } while (0)
    if (!lay) {
        Py_DECREF(m);
        return NULL;
    }
    FIELD(magic); FIELD(version); FIELD(hdr_size); FIELD(capacity); FIELD(total_size);
    FIELD(owner_uid); FIELD(owner_pid); FIELD(owner_start); FIELD(closed); FIELD(frag_active);
    FIELD(attach_pending); FIELD(repairs); FIELD(prod_lock); FIELD(cons_lock);
    FIELD(tail); FIELD(msgs_in); FIELD(cons_waiters); FIELD(pj_valid); FIELD(pj_tail); FIELD(pj_msgs);
    FIELD(head); FIELD(msgs_out); FIELD(prod_waiters); FIELD(cj_valid); FIELD(cj_head); FIELD(cj_msgs);
    FIELD(claim); FIELD(claim_pid); FIELD(claim_waiters); FIELD(claim_start);
    FIELD(pclaim); FIELD(pclaim_pid); FIELD(pclaim_waiters); FIELD(pclaim_start); FIELD(pclaim_beat);
    FIELD(unfinished); FIELD(join_waiters);
#undef FIELD
    PyModule_AddObject(m, "LAYOUT", lay);
    return m;
}
