/* kipc._native._topic — the CPython binding of topic/topic_core (the ring:// broadcast topic).
 * Theory of operation: topic/topic_core.h; contract: kipc/transports/ring_topic.py. This file
 * only converts arguments, counts calls in flight (close from another thread never unmaps
 * under a call or a view) and turns core states into kipc exceptions. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "topic/topic_core.h"

static PyObject *E_Timeout, *E_WouldBlock, *E_Closed, *E_Bad, *E_Limit, *E_Unsupported;
static PyObject *FOREVER;
static PyObject *S_end, *S_error, *S_view;

typedef struct {
    PyObject_HEAD
    tc_topic t;
    PyObject *url;
    _Atomic int inflight; /* calls and views in flight; the last one out unmaps once unmapping */
    int unmapping;
    int view_out; /* a received view not yet released (the cursor waits for it) */
    _Atomic int rbusy; /* fork generation + 1 of the thread receiving on this handle, 0 = none (one at a time) */
    int mapped;
    unsigned populated; /* fork generation + 1 in which this handle filled its page tables, 0 = not yet */
} Topic;

typedef struct {
    PyObject_HEAD
    Topic *owner;
    const unsigned char *ptr;
    Py_ssize_t len;
    int exports, done;
} TopicView;

typedef struct {
    PyObject_HEAD
    Topic *owner;
    unsigned char *ptr;
    Py_ssize_t len;
    int exports, done;
} TopicLoan;

static PyTypeObject TopicType, TopicViewType, TopicLoanType;

/* -- runtime hooks: the GIL and signals ---------------------------------------------------------------- */
static void *rt_release(void) { return PyEval_SaveThread(); }
static void rt_reacquire(void *tok) { PyEval_RestoreThread((PyThreadState *)tok); }
static int rt_interrupted(void) { return PyErr_CheckSignals() < 0; }

/* -- helpers -------------------------------------------------------------------------------------------------- */
static int get_deadline(PyObject *d, double *end)
{
    if (d == NULL || d == FOREVER || d == Py_None) {
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

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL, which is harmless */
#endif
/* Fill this process's page tables for the whole object (the creator's posix_fallocate already
 * allocated the pages): otherwise the first lap of the buffer takes a minor fault per 4 KiB
 * page in every process, ~3x the cost of the copy itself for camera frames. Done by the
 * creator at create, a subscriber when it joins and any other handle at its first publish,
 * so a handle that only reads the header (kipc ls) maps no more than that. Once per handle
 * and fork generation (a child's shared mappings start with empty page tables). Called with
 * the GIL and the handle entered (mapped). Only an optimisation: a failure (an old kernel)
 * leaves the pages to fault in as before. */
static void populate(Topic *o)
{
    unsigned gen = tc_fork_gen() + 1;
    if (o->populated == gen)
        return;
    o->populated = gen;
    void *base = o->t.hdr;
    size_t size = o->t.map_size;
    Py_BEGIN_ALLOW_THREADS
    (void)madvise(base, size, MADV_POPULATE_WRITE);
    Py_END_ALLOW_THREADS
}

static void do_unmap(Topic *o)
{
    if (!o->mapped)
        return;
    o->mapped = 0;
    tc_leave(&o->t);
    munmap(o->t.hdr, o->t.map_size);
}

static int enter(Topic *o, const char *op)
{
    if (!o->mapped || o->unmapping || atomic_load(&o->t.closing)) {
        PyErr_Format(E_Closed, "%s on %S: closed by this process", op, o->url);
        return -1;
    }
    atomic_fetch_add(&o->inflight, 1);
    return 0;
}

static void leave(Topic *o)
{
    if (atomic_fetch_sub(&o->inflight, 1) == 1 && o->unmapping)
        do_unmap(o);
}

static PyObject *raise_state(Topic *o, int rc, const char *op, PyObject *dl)
{
    if (rc == TC_ERR) /* the interrupted hook left an exception set */
        return NULL;
    if (rc == TC_TIMEOUT) {
        /* a kipc Deadline words its own timeout (Deadline.error: WouldBlock for timeout=0), one
         * wording for every transport; a bare float deadline names none (the caller re-raises) */
        PyObject *exc = NULL;
        if (dl && dl != FOREVER && dl != Py_None && Py_TYPE(dl) == Py_TYPE(FOREVER)) {
            PyObject *what = PyUnicode_FromFormat("%s on %S", op, o->url);
            exc = what ? PyObject_CallMethodOneArg(dl, S_error, what) : NULL;
            Py_XDECREF(what);
        }
        if (exc && PyExceptionInstance_Check(exc))
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        else if (!PyErr_Occurred())
            PyErr_Format(E_Timeout, "%s on %S timed out", op, o->url);
        Py_XDECREF(exc);
    } else if (rc == TC_LOCAL)
        PyErr_Format(E_Closed, "%s on %S: closed by this process", op, o->url);
    else if (rc == TC_CLOSED)
        PyErr_Format(E_Closed, "%s on %S: the topic was closed by its creator", op, o->url);
    else if (rc == TC_CORRUPT)
        PyErr_Format(E_Bad, "%s on %S: corrupt shared memory: %s", op, o->url, o->t.why);
    else if (rc == TC_NOSLOT)
        PyErr_Format(E_Limit, "%s on %S: all %u subscriber slots are taken by live subscribers "
                     "(create the topic with a larger max_subscribers=)", op, o->url, o->t.max_subs);
    else if (rc == TC_EVICTED)
        PyErr_Format(E_Bad, "%s on %S: %s", op, o->url, o->t.subscriber ? o->t.why : "this handle does not subscribe");
    else
        PyErr_Format(PyExc_RuntimeError, "%s on %S: unexpected state %d", op, o->url, rc);
    return NULL;
}

/* -- the view ----------------------------------------------------------------------------------------------- */
static int view_getbuffer(TopicView *v, Py_buffer *view, int flags)
{
    if (v->done) {
        PyErr_SetString(PyExc_BufferError, "topic view already released");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)v, (void *)v->ptr, v->len, 1, flags) < 0)
        return -1;
    v->exports++;
    return 0;
}

static void view_finish(TopicView *v)
{
    if (v->done)
        return;
    v->done = 1;
    Topic *o = v->owner;
    o->view_out = 0;
    if (!atomic_load(&o->t.closing))
        tc_consume(&o->t, (uint32_t)v->len, INFINITY); /* block mode: the record was pinned, nothing torn */
    leave(o);
}

static void view_releasebuffer(TopicView *v, Py_buffer *view)
{
    if (--v->exports == 0)
        view_finish(v);
}

static void view_dealloc(TopicView *v)
{
    view_finish(v);
    Py_XDECREF(v->owner);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static PyBufferProcs view_as_buffer = {(getbufferproc)view_getbuffer, (releasebufferproc)view_releasebuffer};

static PyTypeObject TopicViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._topic.TopicView",
    .tp_basicsize = sizeof(TopicView),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_as_buffer = &view_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a received message in place; the subscriber's cursor moves when it is released",
};

/* -- the loan: writable space in the buffer, the publisher lock held until commit/abort ---------------------- */
static int loan_getbuffer(TopicLoan *l, Py_buffer *view, int flags)
{
    if (l->done) {
        PyErr_SetString(PyExc_BufferError, "topic loan already committed or aborted");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)l, l->ptr, l->len, 0, flags) < 0)
        return -1;
    l->exports++;
    return 0;
}

static void loan_releasebuffer(TopicLoan *l, Py_buffer *view) { l->exports--; }

static void loan_finish(TopicLoan *l, int commit)
{
    if (l->done)
        return;
    l->done = 1;
    tc_loan_end(&l->owner->t, commit);
    leave(l->owner);
}

static PyObject *TopicLoan_commit(TopicLoan *l, PyObject *unused)
{
    if (l->done) {
        PyErr_SetString(PyExc_RuntimeError, "topic loan already committed or aborted");
        return NULL;
    }
    if (atomic_load(&l->owner->t.closing)) {
        loan_finish(l, 0);
        PyErr_Format(E_Closed, "send on %S: closed by this process while the loan was open (nothing published)",
                     l->owner->url);
        return NULL;
    }
    loan_finish(l, 1);
    Py_RETURN_NONE;
}

static PyObject *TopicLoan_abort(TopicLoan *l, PyObject *unused)
{
    loan_finish(l, 0);
    Py_RETURN_NONE;
}

static void loan_dealloc(TopicLoan *l)
{
    loan_finish(l, 0); /* never committed: nothing is published */
    Py_XDECREF(l->owner);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyMethodDef TopicLoan_methods[] = {
    {"commit", (PyCFunction)TopicLoan_commit, METH_NOARGS, "publish the loaned bytes as one message"},
    {"abort", (PyCFunction)TopicLoan_abort, METH_NOARGS, "publish nothing and release the publisher lock"},
    {NULL},
};

static PyBufferProcs loan_as_buffer = {(getbufferproc)loan_getbuffer, (releasebufferproc)loan_releasebuffer};

static PyTypeObject TopicLoanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._topic.TopicLoan",
    .tp_basicsize = sizeof(TopicLoan),
    .tp_dealloc = (destructor)loan_dealloc,
    .tp_as_buffer = &loan_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = TopicLoan_methods,
    .tp_doc = "writable space for one message in the topic; holds the publisher lock until commit/abort",
};

/* -- Topic ------------------------------------------------------------------------------------------------- */
/* Topic(fd, url, create, capacity, max_subs, overflow, owner_pid, owner_start, spin_seconds) */
static int Topic_init(Topic *o, PyObject *args, PyObject *kw)
{
    int fd, create;
    unsigned long long cap, pid, start;
    unsigned int subs, overflow;
    double spin;
    PyObject *url;
    if (!PyArg_ParseTuple(args, "iOpKIIKKd", &fd, &url, &create, &cap, &subs, &overflow, &pid, &start, &spin))
        return -1;
    if (o->mapped) {
        PyErr_SetString(PyExc_RuntimeError, "Topic already initialised");
        return -1;
    }
    Py_INCREF(url);
    Py_XSETREF(o->url, url);
    size_t size;
    if (create) {
        if (subs == 0 || subs > TC_MAX_SUBS || overflow > TC_OVERFLOW_DROP || cap < TC_PAGE || cap > TC_MAX_CAP ||
            (cap & (cap - 1))) {
            PyErr_SetString(PyExc_ValueError, "bad topic geometry");
            return -1;
        }
        size = (size_t)(tc_hdr_size(subs) + cap);
        if (ftruncate(fd, (off_t)size) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    } else {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        size = (size_t)st.st_size;
        if (size < 2 * TC_PAGE) {
            PyErr_Format(E_Bad, "open %S: %zu bytes, too small for a kipc topic", url, size);
            return -1;
        }
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    const char *err = NULL;
    if (create)
        err = tc_header_init(base, size, cap, subs, overflow, (uint32_t)pid, start);
    if (!err)
        err = tc_bind(&o->t, base, size);
    if (err) {
        munmap(base, size);
        PyErr_Format(E_Bad, "open %S: %s", url, err);
        return -1;
    }
    o->t.spin = spin;
    o->mapped = 1;
    if (create)
        populate(o);
    return 0;
}

static void Topic_dealloc(Topic *o)
{
    if (o->mapped && atomic_load(&o->inflight) == 0)
        do_unmap(o);
    Py_XDECREF(o->url);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static int parse_op(PyObject *op)
{
    if (PyUnicode_Check(op)) {
        if (PyUnicode_CompareWithASCIIString(op, "send") == 0)
            return 1;
        if (PyUnicode_CompareWithASCIIString(op, "recv") == 0)
            return 0;
    }
    PyErr_Format(PyExc_ValueError, "op must be 'send' or 'recv', not %R", op);
    return -1;
}

/* subscribe(history, deadline) */
static PyObject *Topic_subscribe(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long history;
    double deadline;
    if (nargs != 2 || (history = PyLong_AsUnsignedLongLong(args[0]), PyErr_Occurred()) ||
        get_deadline(args[1], &deadline) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "subscribe(history, deadline)");
        return NULL;
    }
    if (enter(o, "subscribe") < 0)
        return NULL;
    populate(o);
    int rc = tc_join(&o->t, history, deadline);
    leave(o);
    if (rc != TC_OK)
        return raise_state(o, rc, "subscribe", args[1]);
    Py_RETURN_NONE;
}

static PyObject *publish(Topic *o, PyObject *const *items, Py_ssize_t n, PyObject *dl, int nb)
{
    double deadline = 0;
    if (!nb && get_deadline(dl, &deadline) < 0)
        return NULL;
    Py_buffer bufs[4];
    tc_part parts[4];
    if (n > 4) {
        PyErr_SetString(PyExc_ValueError, "at most 4 parts");
        return NULL;
    }
    uint64_t len = 0;
    Py_ssize_t got = 0;
    PyObject *res = NULL;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &bufs[got], PyBUF_C_CONTIGUOUS) < 0)
            goto out;
        parts[got].buf = bufs[got].buf;
        parts[got].len = (size_t)bufs[got].len;
        len += (uint64_t)bufs[got].len;
    }
    if (len > o->t.frag_max) {
        PyErr_Format(PyExc_ValueError, "message of %llu bytes exceeds the limit of %llu bytes", (unsigned long long)len,
                     (unsigned long long)o->t.frag_max);
        goto out;
    }
    if (enter(o, "send") < 0)
        goto out;
    populate(o);
    int rc = tc_publish(&o->t, parts, (int)n, len, nb ? 0.0 : deadline, nb);
    leave(o);
    if (rc == TC_OK)
        res = Py_NewRef(Py_True);
    else if (nb && (rc == TC_FULL || rc == TC_TIMEOUT))
        res = Py_NewRef(Py_False);
    else
        raise_state(o, rc, "send", dl);
out:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&bufs[i]);
    return res;
}

/* send(data, deadline=FOREVER, knobs=None): blocking publish */
static PyObject *Topic_send(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "send(data, deadline=FOREVER, knobs=None)");
        return NULL;
    }
    PyObject *r = publish(o, args, 1, nargs > 1 ? args[1] : NULL, 0);
    if (r == Py_True) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    return r;
}

/* try_send(data, knobs=None) -> bool */
static PyObject *Topic_try_send(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "try_send(data, knobs=None)");
        return NULL;
    }
    return publish(o, args, 1, NULL, 1);
}

/* sendv(parts, deadline=FOREVER): up to 4 buffers as one message */
static PyObject *Topic_sendv(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "sendv(parts: tuple, deadline=FOREVER)");
        return NULL;
    }
    PyObject *r = publish(o, &PyTuple_GET_ITEM(args[0], 0), PyTuple_GET_SIZE(args[0]), nargs > 1 ? args[1] : NULL, 0);
    if (r == Py_True) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    return r;
}

/* Take the handle's receive turn by the deadline: TC_OK, TC_EMPTY (nb and busy), TC_TIMEOUT,
 * TC_LOCAL (closed here) or TC_ERR (a signal handler raised). Waits nap with the GIL released,
 * checking signals every slice. */
static int grab_turn(Topic *o)
{
    int mine = (int)tc_fork_gen() + 1, cur = 0;
    if (atomic_compare_exchange_strong(&o->rbusy, &cur, mine))
        return 1;
    /* a turn taken before a fork belongs to a thread that does not exist in this child */
    return cur != mine && atomic_compare_exchange_strong(&o->rbusy, &cur, mine);
}

static int take_turn(Topic *o, double deadline, int nb)
{
    if (grab_turn(o))
        return TC_OK;
    if (nb)
        return TC_EMPTY;
    for (;;) {
        int rc = TC_TIMEOUT;
        struct timespec now;
        Py_BEGIN_ALLOW_THREADS
        clock_gettime(CLOCK_MONOTONIC, &now);
        double t0 = (double)now.tv_sec + now.tv_nsec * 1e-9, t = t0;
        while (t < deadline && t - t0 < 0.05) {
            if (grab_turn(o)) {
                rc = TC_OK;
                break;
            }
            if (atomic_load(&o->t.closing)) {
                rc = TC_LOCAL;
                break;
            }
            struct timespec nap = {0, 50000};
            nanosleep(&nap, NULL);
            clock_gettime(CLOCK_MONOTONIC, &now);
            t = (double)now.tv_sec + now.tv_nsec * 1e-9;
        }
        if (rc == TC_TIMEOUT && t < deadline)
            rc = -100; /* a slice ended: check signals, go on */
        Py_END_ALLOW_THREADS
        if (rc != -100)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return TC_ERR;
    }
}

static PyObject *take_locked(Topic *o, PyObject *dl, double deadline, int view, int nb);

static PyObject *take(Topic *o, PyObject *dl, int view, int nb)
{
    double deadline = 0;
    if (!nb && get_deadline(dl, &deadline) < 0)
        return NULL;
    if (enter(o, "recv") < 0)
        return NULL;
    if (o->t.subscriber)
        populate(o); /* (a forked child's first receive: its own page tables) */
    int rc = take_turn(o, nb ? 0.0 : deadline, nb);
    if (rc != TC_OK) {
        leave(o);
        if (rc == TC_EMPTY)
            Py_RETURN_NONE;
        return raise_state(o, rc, "recv", dl);
    }
    PyObject *res = take_locked(o, dl, deadline, view, nb);
    atomic_store(&o->rbusy, 0);
    return res;
}

/* take() with the receive turn held; leaves (the in-flight count) on every path but a view's */
static PyObject *take_locked(Topic *o, PyObject *dl, double deadline, int view, int nb)
{
    if (o->view_out) {
        leave(o);
        PyErr_Format(PyExc_RuntimeError, "recv on %S: a received view is still held; release it first", o->url);
        return NULL;
    }
    if (nb) { /* an attempt (the event loop's thread): a resync or rejoin waits for the lock 2 ms at most */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        deadline = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + 0.002;
    }
    for (;;) {
        const unsigned char *ptr;
        uint32_t len;
        int rc = tc_peek(&o->t, &ptr, &len, deadline);
        if (nb && rc == TC_TIMEOUT)
            rc = TC_EMPTY; /* not now: the caller waits for readiness and tries again */
        if (rc == TC_OK) {
            if (view) {
                TopicView *v = PyObject_New(TopicView, &TopicViewType);
                if (!v) {
                    leave(o);
                    return NULL;
                }
                v->owner = (Topic *)Py_NewRef((PyObject *)o);
                v->ptr = ptr;
                v->len = len;
                v->exports = 0;
                v->done = 0;
                o->view_out = 1; /* the view keeps this call's in-flight count until released */
                PyObject *mv = PyMemoryView_FromObject((PyObject *)v);
                Py_DECREF(v);
                return mv;
            }
            PyObject *b = PyBytes_FromStringAndSize(NULL, len);
            if (!b) {
                leave(o);
                return NULL;
            }
            if (len >= (256u << 10)) {
                Py_BEGIN_ALLOW_THREADS
                memcpy(PyBytes_AS_STRING(b), ptr, len);
                Py_END_ALLOW_THREADS
            } else
                memcpy(PyBytes_AS_STRING(b), ptr, len);
            if (tc_consume(&o->t, len, deadline) == TC_OK) {
                leave(o);
                return b;
            }
            Py_DECREF(b); /* overwritten while copied: peek again (resyncs, counts the drop) */
            continue;
        }
        if (rc == TC_EMPTY) {
            if (nb) {
                leave(o);
                Py_RETURN_NONE;
            }
            rc = tc_wait(&o->t, 0, deadline);
            if (rc == TC_OK)
                continue;
        }
        leave(o);
        return raise_state(o, rc, "recv", dl);
    }
}

static int want_view(Topic *o, PyObject *knobs, int *view)
{
    *view = 0;
    if (knobs && knobs != Py_None && PyDict_Check(knobs)) {
        PyObject *v = PyDict_GetItemWithError(knobs, S_view);
        if (!v && PyErr_Occurred())
            return -1;
        if (v && (*view = PyObject_IsTrue(v)) < 0)
            return -1;
    }
    if (*view && o->t.overflow != TC_OVERFLOW_BLOCK) {
        PyErr_Format(E_Unsupported,
                     "recv(view=True) on %S: views are offered with overflow='block' only (a drop_oldest "
                     "publisher may overwrite the message under the view)", o->url);
        return -1;
    }
    return 0;
}

/* loan(n, deadline=FOREVER) -> TopicLoan */
static PyObject *Topic_loan(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    double deadline;
    unsigned long long n;
    if (nargs < 1 || nargs > 2 || (n = PyLong_AsUnsignedLongLong(args[0]), PyErr_Occurred()) ||
        get_deadline(nargs > 1 ? args[1] : NULL, &deadline) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "loan(n, deadline=FOREVER)");
        return NULL;
    }
    if (n > o->t.frag_max) {
        PyErr_Format(PyExc_ValueError, "loan of %llu bytes exceeds the limit of %llu bytes", n,
                     (unsigned long long)o->t.frag_max);
        return NULL;
    }
    if (enter(o, "loan") < 0)
        return NULL;
    populate(o);
    if (o->t.loan_dst) {
        leave(o);
        PyErr_Format(PyExc_RuntimeError, "loan on %S: this handle has a loan open; commit or abort it first",
                     o->url);
        return NULL;
    }
    TopicLoan *l = PyObject_New(TopicLoan, &TopicLoanType);
    if (!l) {
        leave(o);
        return NULL;
    }
    l->owner = (Topic *)Py_NewRef((PyObject *)o);
    l->exports = 0;
    l->done = 1; /* nothing to release until the lock is ours */
    l->len = (Py_ssize_t)n;
    int rc = tc_publish(&o->t, NULL, -1, n, deadline, 0);
    if (rc != TC_OK) {
        Py_DECREF(l);
        leave(o);
        return raise_state(o, rc, "loan", nargs > 1 ? args[1] : NULL);
    }
    l->ptr = o->t.loan_dst;
    l->done = 0; /* the loan keeps this call's in-flight count until commit/abort */
    return (PyObject *)l;
}

/* recv(deadline=FOREVER, knobs=None) */
static PyObject *Topic_recv(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    int view;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "recv(deadline=FOREVER, knobs=None)");
        return NULL;
    }
    if (want_view(o, nargs > 1 ? args[1] : NULL, &view) < 0)
        return NULL;
    return take(o, nargs > 0 ? args[0] : NULL, view, 0);
}

/* try_recv(knobs=None) -> bytes | memoryview | None */
static PyObject *Topic_try_recv(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    int view;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "try_recv(knobs=None)");
        return NULL;
    }
    if (want_view(o, nargs > 0 ? args[0] : NULL, &view) < 0)
        return NULL;
    return take(o, NULL, view, 1);
}

/* wait(op, deadline): until an attempt may succeed, the deadline passes or close(); consumes nothing */
static PyObject *Topic_wait(Topic *o, PyObject *const *args, Py_ssize_t nargs)
{
    double deadline;
    int op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(op, deadline)");
        return NULL;
    }
    if ((op = parse_op(args[0])) < 0 || get_deadline(args[1], &deadline) < 0)
        return NULL;
    if (!o->mapped || o->unmapping)
        Py_RETURN_NONE;
    atomic_fetch_add(&o->inflight, 1);
    int rc = tc_wait(&o->t, op, deadline);
    leave(o);
    if (rc == TC_ERR || rc == TC_CORRUPT)
        return raise_state(o, rc, op ? "send" : "recv", args[1]);
    Py_RETURN_NONE;
}

static PyObject *Topic_ready(Topic *o, PyObject *arg)
{
    int op = parse_op(arg);
    if (op < 0)
        return NULL;
    if (!o->mapped || o->unmapping)
        Py_RETURN_TRUE;
    return PyBool_FromLong(tc_ready(&o->t, op));
}

static PyObject *Topic_interrupt(Topic *o, PyObject *unused)
{
    if (o->mapped)
        tc_interrupt(&o->t);
    Py_RETURN_NONE;
}

static PyObject *Topic_mark_closed(Topic *o, PyObject *unused)
{
    if (o->mapped)
        tc_mark_closed(&o->t);
    Py_RETURN_NONE;
}

static PyObject *Topic_unmap(Topic *o, PyObject *unused)
{
    if (!o->mapped || o->unmapping)
        Py_RETURN_NONE;
    o->unmapping = 1;
    atomic_store(&o->t.closing, 1);
    tc_wake_all(&o->t);
    if (atomic_load(&o->inflight) == 0)
        do_unmap(o);
    Py_RETURN_NONE;
}

/* The published count as the next lock holder will see it: a publisher killed between its wpos
 * and wmsg stores leaves wmsg one short of a record subscribers already receive, until a later
 * holder rolls the journal forward; a lock-free reader applies that roll-forward itself (only the
 * one step a commit takes: anything else in the journal is ignored, as read). */
static uint64_t published_now(struct tc_hdr *h)
{
    uint64_t msg = atomic_load(&h->wmsg);
    if (atomic_load_explicit(&h->j_valid, memory_order_acquire) && h->j_wmsg == msg + 1 &&
        h->j_wpos == atomic_load_explicit(&h->wpos, memory_order_acquire))
        return msg + 1;
    return msg;
}

static PyObject *Topic_info(Topic *o, PyObject *unused)
{
    if (!o->mapped) {
        PyErr_Format(E_Closed, "info on %S: closed by this process", o->url);
        return NULL;
    }
    struct tc_hdr *h = o->t.hdr;
    uint64_t published = published_now(h);
    PyObject *slots = PyList_New(0);
    if (!slots)
        return NULL;
    for (uint32_t i = 0; i < o->t.max_subs; i++) { /* figures for kipc ls: as read, unverified */
        uint64_t tok = atomic_load(&h->slots[i].token);
        if (!tok)
            continue;
        uint64_t msgno = atomic_load(&h->slots[i].msgno);
        /* the published count again, after the cursor: the subscriber may have received messages
         * published since the first load, and its lag must not wrap below zero */
        published = published_now(h);
        PyObject *d = Py_BuildValue("{s:I,s:K,s:K,s:O}", "pid", (unsigned)(tok >> 32), "lag",
                                    (unsigned long long)(published - msgno), "dropped",
                                    (unsigned long long)atomic_load(&h->slots[i].dropped), "alive",
                                    tc_proc_alive_token(tok) ? Py_True : Py_False);
        if (!d || PyList_Append(slots, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(slots);
            return NULL;
        }
        Py_DECREF(d);
    }
    PyObject *res = Py_BuildValue("{s:K,s:I,s:n,s:K,s:K,s:K,s:K,s:I,s:I,s:I,s:O}", "capacity",
                                  (unsigned long long)o->t.cap, "max_subscribers", o->t.max_subs, "subscribers",
                                  PyList_GET_SIZE(slots), "owner_pid", (unsigned long long)h->owner_pid, "wpos",
                                  (unsigned long long)atomic_load(&h->wpos), "oldest",
                                  (unsigned long long)atomic_load(&h->oldest), "published",
                                  (unsigned long long)published, "repairs", atomic_load(&h->repairs), "closed",
                                  atomic_load(&h->closed), "overflow", o->t.overflow, "slots", slots);
    Py_DECREF(slots);
    return res;
}

static PyObject *Topic_get_dropped(Topic *o, void *c) { return PyLong_FromUnsignedLongLong(o->t.dropped); }
static PyObject *Topic_get_frag_max(Topic *o, void *c) { return PyLong_FromUnsignedLongLong(o->t.frag_max); }
static PyObject *Topic_get_capacity(Topic *o, void *c) { return PyLong_FromUnsignedLongLong(o->t.cap); }
static PyObject *Topic_get_max_subs(Topic *o, void *c) { return PyLong_FromUnsignedLong(o->t.max_subs); }
static PyObject *Topic_get_overflow(Topic *o, void *c) { return PyLong_FromUnsignedLong(o->t.overflow); }

static PyGetSetDef Topic_getset[] = {
    {"dropped", (getter)Topic_get_dropped, NULL, "messages this subscriber skipped (drop_oldest)", NULL},
    {"frag_max", (getter)Topic_get_frag_max, NULL, "largest message (capacity/2 - 16)", NULL},
    {"capacity", (getter)Topic_get_capacity, NULL, "data bytes", NULL},
    {"max_subscribers", (getter)Topic_get_max_subs, NULL, "subscriber slots", NULL},
    {"overflow", (getter)Topic_get_overflow, NULL, "0 block, 1 drop_oldest", NULL},
    {NULL},
};

static PyMethodDef Topic_methods[] = {
    {"subscribe", (PyCFunction)(void (*)(void))Topic_subscribe, METH_FASTCALL, NULL},
    {"send", (PyCFunction)(void (*)(void))Topic_send, METH_FASTCALL, NULL},
    {"try_send", (PyCFunction)(void (*)(void))Topic_try_send, METH_FASTCALL, NULL},
    {"sendv", (PyCFunction)(void (*)(void))Topic_sendv, METH_FASTCALL, NULL},
    {"loan", (PyCFunction)(void (*)(void))Topic_loan, METH_FASTCALL, NULL},
    {"recv", (PyCFunction)(void (*)(void))Topic_recv, METH_FASTCALL, NULL},
    {"try_recv", (PyCFunction)(void (*)(void))Topic_try_recv, METH_FASTCALL, NULL},
    {"wait", (PyCFunction)(void (*)(void))Topic_wait, METH_FASTCALL, NULL},
    {"ready", (PyCFunction)Topic_ready, METH_O, NULL},
    {"interrupt", (PyCFunction)Topic_interrupt, METH_NOARGS, NULL},
    {"mark_closed", (PyCFunction)Topic_mark_closed, METH_NOARGS, NULL},
    {"unmap", (PyCFunction)Topic_unmap, METH_NOARGS, NULL},
    {"info", (PyCFunction)Topic_info, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject TopicType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kipc._native._topic.Topic",
    .tp_basicsize = sizeof(Topic),
    .tp_dealloc = (destructor)Topic_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "one process's mapping of a ring:// topic (see kipc.transports.ring_topic)",
    .tp_methods = Topic_methods,
    .tp_getset = Topic_getset,
    .tp_init = (initproc)Topic_init,
    .tp_new = PyType_GenericNew,
};

/* _setup(Timeout, WouldBlock, ChannelClosed, BadObject, LimitExceeded, Unsupported, FOREVER) */
static PyObject *mod_setup(PyObject *m, PyObject *args)
{
    PyObject *a, *b, *c, *d, *e, *u, *f;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &a, &b, &c, &d, &e, &u, &f))
        return NULL;
    Py_XSETREF(E_Unsupported, Py_NewRef(u));
    Py_XSETREF(E_Timeout, Py_NewRef(a));
    Py_XSETREF(E_WouldBlock, Py_NewRef(b));
    Py_XSETREF(E_Closed, Py_NewRef(c));
    Py_XSETREF(E_Bad, Py_NewRef(d));
    Py_XSETREF(E_Limit, Py_NewRef(e));
    Py_XSETREF(FOREVER, Py_NewRef(f));
    Py_RETURN_NONE;
}

static PyObject *mod_header_size(PyObject *m, PyObject *arg)
{
    unsigned long subs = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (subs == 0 || subs > TC_MAX_SUBS) {
        PyErr_Format(PyExc_ValueError, "max_subscribers %lu outside [1, %u]", subs, TC_MAX_SUBS);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(tc_hdr_size((uint32_t)subs));
}

static PyMethodDef mod_methods[] = {
    {"_setup", mod_setup, METH_VARARGS, NULL},
    {"header_size", mod_header_size, METH_O, "header bytes of a topic with that many subscriber slots"},
    {NULL},
};

static struct PyModuleDef topic_module = {PyModuleDef_HEAD_INIT, "_topic", "ring:// broadcast topic core", -1,
                                          mod_methods};

PyMODINIT_FUNC PyInit__topic(void)
{
    tc_rt.release = rt_release;
    tc_rt.reacquire = rt_reacquire;
    tc_rt.interrupted = rt_interrupted;
    S_end = PyUnicode_InternFromString("end");
    S_error = PyUnicode_InternFromString("error");
    S_view = PyUnicode_InternFromString("view");
    E_Timeout = Py_NewRef(PyExc_TimeoutError);
    E_WouldBlock = Py_NewRef(PyExc_BlockingIOError);
    E_Closed = Py_NewRef(PyExc_RuntimeError);
    E_Bad = Py_NewRef(PyExc_RuntimeError);
    E_Limit = Py_NewRef(PyExc_RuntimeError);
    E_Unsupported = Py_NewRef(PyExc_NotImplementedError);
    if (PyType_Ready(&TopicType) < 0 || PyType_Ready(&TopicViewType) < 0 || PyType_Ready(&TopicLoanType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&topic_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Topic", (PyObject *)&TopicType) < 0 ||
        PyModule_AddObjectRef(m, "TopicView", (PyObject *)&TopicViewType) < 0 ||
        PyModule_AddObjectRef(m, "TopicLoan", (PyObject *)&TopicLoanType) < 0 ||
        PyModule_AddObject(m, "MAGIC", PyLong_FromUnsignedLongLong(TOPIC_MAGIC)) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SUBSCRIBERS", TC_MAX_SUBS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *layout = Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "lock", offsetof(struct tc_hdr, lock),
                                     "j_valid", offsetof(struct tc_hdr, j_valid), "j_wpos", offsetof(struct tc_hdr, j_wpos),
                                     "j_wmsg", offsetof(struct tc_hdr, j_wmsg),
                                     "wpos", offsetof(struct tc_hdr, wpos), "wmsg", offsetof(struct tc_hdr, wmsg),
                                     "oldest", offsetof(struct tc_hdr, oldest), "closed",
                                     offsetof(struct tc_hdr, closed), "max_subs", offsetof(struct tc_hdr, max_subs),
                                     "slots", offsetof(struct tc_hdr, slots), "slot_size", sizeof(struct tc_slot));
    if (PyModule_AddObject(m, "LAYOUT", layout) < 0) { /* header offsets, for the hostile-peer tests */
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    tc_self_token(); /* installs the fork handler before any fork */
    return m;
}
