/*
 * kipc._native._reqrep — the ring:// hot path of kipc.reqrep (Server.recv, Request.reply,
 * Client.request) in C. The contract is kipc/reqrep.py's module docstring; this file only
 * moves its per-message steps out of the interpreter.
 *
 * It knows nothing of the ring's internals: it calls the rings' own bound C methods
 * (RingChannel._send_blocking / _recv_blocking, i.e. _ring.Ring.send / recv) through
 * vectorcall with an absolute CLOCK_MONOTONIC deadline (a float, or None = never), as
 * reqrep.py would. Every byte read from a ring is untrusted: lengths are checked before
 * any slice, and anything that is not a well-formed request (reply) is counted in the
 * server's (client's) `malformed` and dropped.
 *
 * Wire format (reqrep.py): request = "KRQ1" u64 id u16 n return-address[n] payload;
 * reply = "KRP1" u64 id payload (little-endian).
 *
 *   _setup(InvalidArgument, DeadlineExceeded, ChannelClosed, NotFound, RequestType, end, TIMEOUT_MAX, LIVENESS)
 *   take(server, recv, end, senders, reply_timeout, plain) -> RequestType
 *       the next well-formed request from recv(end) (its errors propagate); the reply ring's
 *       bound send is looked up in `senders` (return address -> send) once, here
 *   call(client, send, recv, head, rid, payload, timeout) -> bytes
 *       send "KRQ1" rid head payload with send(frame, end), then wait for the reply to `rid`
 *       in LIVENESS slices (late replies to earlier ids dropped, malformed ones counted);
 *       between slices client._no_reply_yet(timeout, end) raises Timeout or PeerGone or
 *       returns; a failed send goes to client._send_failed(exc, timeout), which raises.
 *       A timeout other than None or a float/int in (0, TIMEOUT_MAX] is left to end(timeout)
 *       (reqrep._end: validation and its errors, 0 = one attempt).
 *   Request(server, rid, to, data): what take() makes; .reply(data, *, timeout=None) -> bool
 *       sends in C when take() found the sender, the payload is bytes and the codec is plain;
 *       otherwise, and on a failed send, it calls back into server._reply / _reply_failed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; this file copies ids as they are in memory"
#endif

#define HDR 14 /* "KRQ1" u64 id u16 n */
#define RHDR 12 /* "KRP1" u64 id */

static PyObject *E_Invalid, *E_Deadline, *E_Closed, *E_NotFound;
static PyTypeObject *RequestType; /* reqrep.Request (a subclass of _reqrep.Request) */
static PyObject *S_malformed, *S_reply, *S_reply_failed, *S_no_reply_yet, *S_send_failed;
static PyObject *END;               /* reqrep._end: the validating path of a timeout */
static double TIMEOUT_MAX = 0.0, LIVENESS = 0.25;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* obj.malformed += 1 (a rare path: the attribute lives on the Python object) */
static int count_malformed(PyObject *obj)
{
    PyObject *n = PyObject_GetAttr(obj, S_malformed);
    if (!n)
        return -1;
    PyObject *one = PyLong_FromLong(1);
    PyObject *m = one ? PyNumber_Add(n, one) : NULL;
    Py_DECREF(n);
    Py_XDECREF(one);
    if (!m)
        return -1;
    int rc = PyObject_SetAttr(obj, S_malformed, m);
    Py_DECREF(m);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Request */

typedef struct {
    PyObject_HEAD
    PyObject *server;
    PyObject *to;     /* a ring client's return address (bytes) or a connection */
    PyObject *data;
    PyObject *sender; /* the reply ring's bound send, or NULL: reply through server._reply */
    unsigned long long rid;
    double reply_timeout;
    int replied;
    int plain;
} Request;

/* GC: `data` is the user's (a decoded value may hold anything, even this request) */
static int Request_traverse(Request *self, visitproc visit, void *arg)
{
    Py_VISIT(self->server);
    Py_VISIT(self->to);
    Py_VISIT(self->data);
    Py_VISIT(self->sender);
    return 0;
}

static int Request_clear(Request *self)
{
    Py_CLEAR(self->server);
    Py_CLEAR(self->to);
    Py_CLEAR(self->data);
    Py_CLEAR(self->sender);
    return 0;
}

static void Request_dealloc(Request *self)
{
    PyObject_GC_UnTrack(self);
    Request_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self); /* a Python subclass's type: subtype_dealloc decrefs it */
}

static PyObject *Request_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *server, *to, *data;
    unsigned long long rid;
    static char *kwlist[] = {"server", "rid", "to", "data", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKOO:Request", kwlist, &server, &rid, &to, &data))
        return NULL;
    Request *self = (Request *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->server = Py_NewRef(server);
    self->to = Py_NewRef(to);
    self->data = Py_NewRef(data);
    self->rid = rid;
    return (PyObject *)self;
}

/* reply(data, *, timeout=None) -> bool */
static PyObject *Request_reply(Request *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 || (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)) {
        PyErr_SetString(PyExc_TypeError, "reply(data, *, timeout=None)");
        return NULL;
    }
    if (nkw)
        timeout = args[1];
    PyObject *data = args[0];
    if (self->replied || !self->server || !self->to) { /* (cleared by the GC: a finalizer's call) */
        PyErr_SetString(E_Invalid, "this request was already answered");
        return NULL;
    }
    self->replied = 1;
    if (!self->sender || !self->plain || !PyBytes_CheckExact(data) || timeout != Py_None) {
        PyObject *rid = PyLong_FromUnsignedLongLong(self->rid);
        if (!rid)
            return NULL;
        PyObject *a[5] = {self->server, self->to, rid, data, timeout};
        PyObject *r = PyObject_VectorcallMethod(S_reply, a, 5, NULL);
        Py_DECREF(rid);
        return r;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, RHDR + n);
    if (!frame)
        return NULL;
    char *p = PyBytes_AS_STRING(frame);
    memcpy(p, "KRP1", 4);
    memcpy(p + 4, &self->rid, 8);
    memcpy(p + RHDR, PyBytes_AS_STRING(data), (size_t)n);
    PyObject *end = PyFloat_FromDouble(mono() + self->reply_timeout);
    if (!end) {
        Py_DECREF(frame);
        return NULL;
    }
    PyObject *sa[3] = {frame, end, Py_None};
    PyObject *r = PyObject_Vectorcall(self->sender, sa, 3, NULL);
    if (r) {
        Py_DECREF(r);
        Py_DECREF(frame);
        Py_DECREF(end);
        Py_RETURN_TRUE;
    }
    if (!PyErr_ExceptionMatches(E_Closed) && !PyErr_ExceptionMatches(E_Deadline) && !PyErr_ExceptionMatches(E_NotFound)
        && !PyErr_ExceptionMatches(E_Invalid)) {
        Py_DECREF(frame);
        Py_DECREF(end);
        return NULL;
    }
    PyObject *t, *exc, *tb; /* Python 3.11: no PyErr_GetRaisedException */
    PyErr_Fetch(&t, &exc, &tb);
    PyErr_NormalizeException(&t, &exc, &tb);
    if (tb)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    if (!exc) {
        Py_DECREF(frame);
        Py_DECREF(end);
        return NULL;
    }
    /* server._reply_failed(to, frame, end, exc): the eviction race, or the client has gone */
    PyObject *a[5] = {self->server, self->to, frame, end, exc};
    r = PyObject_VectorcallMethod(S_reply_failed, a, 5, NULL);
    Py_DECREF(exc);
    Py_DECREF(frame);
    Py_DECREF(end);
    return r;
}

static PyObject *Request_get_id(Request *self, void *closure) { return PyLong_FromUnsignedLongLong(self->rid); }

static PyMethodDef Request_methods[] = {
    {"reply", (PyCFunction)(void (*)(void))Request_reply, METH_FASTCALL | METH_KEYWORDS,
     "reply(data, *, timeout=None) -> bool: send the reply; False if the client has gone (dropped)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Request_members[] = {
    {"server", T_OBJECT_EX, offsetof(Request, server), READONLY, "the Server that received it"},
    {"data", T_OBJECT_EX, offsetof(Request, data), 0, "the request's payload (decoded by the codec)"},
    {"_to", T_OBJECT_EX, offsetof(Request, to), READONLY, "return address or connection"},
    {"_rid", T_ULONGLONG, offsetof(Request, rid), READONLY, "the client's 64-bit id"},
    {"_replied", T_INT, offsetof(Request, replied), 0, "answered already"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Request_getset[] = {
    {"id", (getter)Request_get_id, NULL, "the 64-bit id its client gave this request", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestBase = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kipc._native._reqrep.Request",
    .tp_basicsize = sizeof(Request),
    .tp_dealloc = (destructor)Request_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Request(server, rid, to, data): one request (see kipc.reqrep)",
    .tp_traverse = (traverseproc)Request_traverse,
    .tp_clear = (inquiry)Request_clear,
    .tp_methods = Request_methods,
    .tp_members = Request_members,
    .tp_getset = Request_getset,
    .tp_new = Request_new,
};

/* ------------------------------------------------------------------------- */
/* server: take */

static int as_buffer(PyObject *msg, Py_buffer *b)
{
    return PyObject_GetBuffer(msg, b, PyBUF_SIMPLE);
}

/* take(server, recv, end, senders, reply_timeout, plain) -> Request */
static PyObject *take(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyDict_Check(args[3]) || !PyFloat_Check(args[4]) || !RequestType) {
        PyErr_SetString(PyExc_TypeError, "take(server, recv, end, senders: dict, reply_timeout: float, plain)");
        return NULL;
    }
    PyObject *server = args[0], *recv = args[1], *end = args[2], *senders = args[3];
    int plain = PyObject_IsTrue(args[5]);
    if (plain < 0)
        return NULL;
    for (;;) {
        PyObject *msg = PyObject_Vectorcall(recv, &end, 1, NULL);
        if (!msg)
            return NULL;
        Py_buffer b;
        if (as_buffer(msg, &b) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        const unsigned char *p = b.buf;
        Py_ssize_t len = b.len, stop = 0;
        if (len >= HDR && memcmp(p, "KRQ1", 4) == 0) {
            stop = HDR + (Py_ssize_t)(p[12] | (unsigned)p[13] << 8);
            for (Py_ssize_t i = HDR; i < stop && stop <= len; i++)
                if (p[i] >= 0x80) /* the return address names a ring: ASCII (validated when opened) */
                    stop = len + 1;
        }
        if (stop == 0 || stop > len) {
            PyBuffer_Release(&b);
            Py_DECREF(msg);
            if (count_malformed(server) < 0)
                return NULL;
            continue;
        }
        Request *req = (Request *)RequestType->tp_alloc(RequestType, 0);
        if (!req) {
            PyBuffer_Release(&b);
            Py_DECREF(msg);
            return NULL;
        }
        memcpy(&req->rid, p + 4, 8);
        req->to = PyBytes_FromStringAndSize((const char *)p + HDR, stop - HDR);
        req->data = PyBytes_FromStringAndSize((const char *)p + stop, len - stop);
        PyBuffer_Release(&b);
        Py_DECREF(msg);
        if (!req->to || !req->data) {
            Py_DECREF(req);
            return NULL;
        }
        req->server = Py_NewRef(server);
        PyObject *send = PyDict_GetItemWithError(senders, req->to); /* borrowed */
        if (!send && PyErr_Occurred()) {
            Py_DECREF(req);
            return NULL;
        }
        req->sender = Py_XNewRef(send);
        req->reply_timeout = PyFloat_AS_DOUBLE(args[4]);
        req->plain = plain;
        return (PyObject *)req;
    }
}

/* ------------------------------------------------------------------------- */
/* client: call / wait */

static PyObject *wait_reply(PyObject *client, PyObject *recv, unsigned long long rid, PyObject *until)
{
    for (;;) {
        PyObject *msg = PyObject_Vectorcall(recv, &until, 1, NULL);
        if (!msg) {
            if (PyErr_ExceptionMatches(E_Deadline)) {
                PyErr_Clear();
                Py_RETURN_NONE; /* the slice passed: the caller checks its deadline and the server */
            }
            return NULL;
        }
        Py_buffer b;
        if (as_buffer(msg, &b) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        const unsigned char *p = b.buf;
        PyObject *got = NULL;
        int bad = b.len < RHDR || memcmp(p, "KRP1", 4) != 0;
        if (!bad && memcmp(p + 4, &rid, 8) == 0)
            got = PyBytes_FromStringAndSize((const char *)p + RHDR, b.len - RHDR);
        PyBuffer_Release(&b);
        Py_DECREF(msg);
        if (got || PyErr_Occurred())
            return got;
        if (bad && count_malformed(client) < 0)
            return NULL;
        /* else a late reply to an earlier request that timed out: dropped */
    }
}

static int get_rid(PyObject *o, unsigned long long *rid)
{
    *rid = PyLong_AsUnsignedLongLong(o);
    return *rid == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

/* call(client, send, recv, head, rid, payload, timeout) -> bytes */
static PyObject *call(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long rid;
    if (nargs != 7 || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "call(client, send, recv, head: bytes, rid, payload, timeout)");
        return NULL;
    }
    PyObject *client = args[0], *send = args[1], *recv = args[2], *timeout = args[6];
    if (get_rid(args[4], &rid) < 0)
        return NULL;
    double end = INFINITY, t = -1.0;
    if (timeout != Py_None) {
        if (PyFloat_CheckExact(timeout))
            t = PyFloat_AS_DOUBLE(timeout);
        else if (PyLong_CheckExact(timeout)) /* not bool: PyLong_CheckExact */
            t = PyLong_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred())
            PyErr_Clear(); /* a huge int: the validating path says what is wrong */
        if (t > 0 && t <= TIMEOUT_MAX) {
            end = mono() + t;
        } else {
            PyObject *e = PyObject_CallOneArg(END, timeout); /* raises for a bad timeout */
            if (!e)
                return NULL;
            end = e == Py_None ? INFINITY : PyFloat_AsDouble(e);
            Py_DECREF(e);
            if (end == -1.0 && PyErr_Occurred())
                return NULL;
        }
    }
    PyObject *endobj = end == INFINITY ? Py_NewRef(Py_None) : PyFloat_FromDouble(end);
    if (!endobj)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[5], &b, PyBUF_SIMPLE) < 0) {
        Py_DECREF(endobj);
        return NULL;
    }
    Py_ssize_t hn = PyBytes_GET_SIZE(args[3]);
    PyObject *frame = b.len > PY_SSIZE_T_MAX - 12 - hn ? PyErr_NoMemory() : PyBytes_FromStringAndSize(NULL, 12 + hn + b.len);
    if (!frame) {
        PyBuffer_Release(&b);
        Py_DECREF(endobj);
        return NULL;
    }
    char *p = PyBytes_AS_STRING(frame);
    memcpy(p, "KRQ1", 4);
    memcpy(p + 4, &rid, 8);
    memcpy(p + 12, PyBytes_AS_STRING(args[3]), (size_t)hn);
    memcpy(p + 12 + hn, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    PyObject *sa[2] = {frame, endobj};
    PyObject *r = PyObject_Vectorcall(send, sa, 2, NULL);
    Py_DECREF(frame);
    if (!r) {
        if (PyErr_ExceptionMatches(E_Deadline) || PyErr_ExceptionMatches(E_Closed)) {
            PyObject *et, *exc, *tb;
            PyErr_Fetch(&et, &exc, &tb);
            PyErr_NormalizeException(&et, &exc, &tb);
            if (tb && exc)
                PyException_SetTraceback(exc, tb);
            Py_XDECREF(et);
            Py_XDECREF(tb);
            if (exc) { /* client._send_failed(exc, timeout) raises what it means */
                PyObject *a[3] = {client, exc, timeout};
                PyObject *x = PyObject_VectorcallMethod(S_send_failed, a, 3, NULL);
                Py_DECREF(exc);
                if (x) {
                    Py_DECREF(x);
                    PyErr_SetString(PyExc_RuntimeError, "reqrep: _send_failed returned instead of raising");
                }
            } else if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "reqrep: a send failed without an exception");
            }
        }
        Py_DECREF(endobj);
        return NULL;
    }
    Py_DECREF(r);
    for (;;) {
        double until = mono() + LIVENESS; /* in slices: a dead creating server is noticed */
        if (end < until)
            until = end;
        PyObject *u = PyFloat_FromDouble(until);
        if (!u) {
            Py_DECREF(endobj);
            return NULL;
        }
        PyObject *got = wait_reply(client, recv, rid, u);
        Py_DECREF(u);
        if (got != Py_None) {
            Py_DECREF(endobj);
            return got; /* the reply, or NULL */
        }
        Py_DECREF(got);
        PyObject *a[3] = {client, timeout, endobj}; /* raises Timeout / PeerGone, or returns */
        PyObject *x = PyObject_VectorcallMethod(S_no_reply_yet, a, 3, NULL);
        if (!x) {
            Py_DECREF(endobj);
            return NULL;
        }
        Py_DECREF(x);
    }
}

/* ------------------------------------------------------------------------- */

static PyObject *setup(PyObject *mod, PyObject *args)
{
    PyObject *inv, *dl, *cl, *nf, *rt, *end;
    double tmax, live;
    if (!PyArg_ParseTuple(args, "OOOOO!Odd:_setup", &inv, &dl, &cl, &nf, &PyType_Type, &rt, &end, &tmax, &live))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)rt, &RequestBase)) {
        PyErr_SetString(PyExc_TypeError, "_setup: the request type must subclass _reqrep.Request");
        return NULL;
    }
    Py_XSETREF(E_Invalid, Py_NewRef(inv));
    Py_XSETREF(E_Deadline, Py_NewRef(dl));
    Py_XSETREF(E_Closed, Py_NewRef(cl));
    Py_XSETREF(E_NotFound, Py_NewRef(nf));
    Py_XSETREF(RequestType, (PyTypeObject *)Py_NewRef(rt));
    Py_XSETREF(END, Py_NewRef(end));
    TIMEOUT_MAX = tmax;
    LIVENESS = live;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"_setup", setup, METH_VARARGS,
     "_setup(InvalidArgument, DeadlineExceeded, ChannelClosed, NotFound, RequestType, end, TIMEOUT_MAX, LIVENESS)"},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(server, recv, end, senders, reply_timeout, plain) -> Request: the next well-formed request"},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL,
     "call(client, send, recv, head, rid, payload, timeout) -> bytes: send a request, wait for its reply"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._reqrep", "the ring:// hot path of kipc.reqrep", -1, methods,
};

PyMODINIT_FUNC PyInit__reqrep(void)
{
    if (PyType_Ready(&RequestBase) < 0)
        return NULL;
    S_malformed = PyUnicode_InternFromString("malformed");
    S_reply = PyUnicode_InternFromString("_reply");
    S_reply_failed = PyUnicode_InternFromString("_reply_failed");
    S_no_reply_yet = PyUnicode_InternFromString("_no_reply_yet");
    S_send_failed = PyUnicode_InternFromString("_send_failed");
    if (!S_malformed || !S_reply || !S_reply_failed || !S_no_reply_yet || !S_send_failed)
        return NULL;
    /* until _setup: the builtin classes, so nothing here is ever NULL */
    E_Invalid = Py_NewRef(PyExc_ValueError);
    E_Deadline = Py_NewRef(PyExc_TimeoutError);
    E_Closed = Py_NewRef(PyExc_EOFError);
    E_NotFound = Py_NewRef(PyExc_FileNotFoundError);
    END = Py_NewRef(Py_None);
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Request", (PyObject *)&RequestBase) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
