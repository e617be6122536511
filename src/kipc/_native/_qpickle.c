/*
 * kipc._native._qpickle — kipc.Queue's test-and-pickle for plain builtins, in one C call.
 *
 *   plain_dumps(obj) -> bytes | None
 *       pickle.dumps(obj, 5) when obj is "plain", else None. Plain: an exact bytes shorter
 *       than BIG_BYTES, str, int, float, bool or None; or an exact tuple, list or dict of at
 *       most MAX_ITEMS entries whose items (keys and values) are exact str, bytes, int, float,
 *       bool or None. The C pickler writes such objects itself — it consults no dispatch
 *       table, reducer or copyreg entry for exact builtins — so the result is byte for byte
 *       what multiprocessing's ForkingPickler.dumps(obj, 5) writes.
 *   plain_dumps_many(objs: list) -> list[bytes] | None
 *       [plain_dumps(o) for o in objs] when every object is plain, else None (nothing lost:
 *       the caller then pickles one by one as it would without this).
 *   plain_send(send, obj) -> True | bytes | None
 *       put()'s fast path: for a plain obj, pickle it and call send(pickle) (the ring's
 *       try_send); True when send said it was sent, else the pickle (no room now: the caller
 *       buffers it); None when obj is not plain (nothing called).
 *
 *   loads(data) -> object
 *       pickle.loads(data); a pickle of exactly dumps_bytes' shape (checked byte for byte
 *       against its own length: the data comes from shared memory) is cut out directly.
 *   alloc(n) -> bytearray
 *       Ring.recv_into's allocator: a bytearray of n bytes only the caller holds. From 1 MiB
 *       to 128 MiB it comes from a pool of at most POOL_KEEP blocks this process reuses once
 *       nothing else refers to them (refcount 1: every view, slice and numpy array built over
 *       a block holds a reference to it), resized within its allocation (no realloc), so the
 *       memory is already faulted in: a fresh 100 MB block costs a page fault per 4 KiB on
 *       first touch (~1 GB/s here, against ~10 GB/s into warm memory). In C because it runs
 *       under the ring's consumer lock: no Python code (no signal handler, no GC: a bytearray
 *       is not GC-tracked) may run there.
 *   pool_clear()
 *       drop the blocks the pool keeps (giving their memory back).
 *
 * Why C: in Python the type test (set(map(type, ...)) and friends) costs as much as the
 * pickling itself (~250 ns each for a 3-tuple on the project's box); here it is a few loads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BIG_BYTES ((Py_ssize_t)1 << 20) /* bytes from this size travel as parts (queues.py) */
#define MAX_ITEMS 32                    /* a bigger container is left to the general path */

static PyObject *pickle_dumps; /* _pickle.dumps */
static PyObject *protocol;     /* 5 */

static inline int atom(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    return o == Py_None || t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type ||
           t == &PyBool_Type || t == &PyBytes_Type;
}

static int plain(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyBytes_Type)
        return PyBytes_GET_SIZE(o) < BIG_BYTES;
    if (atom(o))
        return 1;
    if (t == &PyTuple_Type || t == &PyList_Type) {
        /* a list cannot change under us: the GIL is held and nothing here runs Python code */
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        if (n > MAX_ITEMS)
            return 0;
        PyObject **items = PySequence_Fast_ITEMS(o);
        for (Py_ssize_t i = 0; i < n; i++)
            if (!atom(items[i]))
                return 0;
        return 1;
    }
    if (t == &PyDict_Type) {
        if (PyDict_GET_SIZE(o) > MAX_ITEMS)
            return 0;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v))
            if (!atom(k) || !atom(v))
                return 0;
        return 1;
    }
    return 0;
}

/* pickle.dumps(b, 5) of an exact bytes object under BIG_BYTES, written out directly (a
 * Pickler per call is most of the cost of a small one). The C pickler writes: PROTO 5; then,
 * under 64 KiB (its frame target), one FRAME holding SHORT_BINBYTES (< 256) or BINBYTES, the
 * data, MEMOIZE and STOP; from 64 KiB no frame: BINBYTES, data, MEMOIZE, STOP. A test
 * compares these bytes with ForkingPickler's for every size class. */
static PyObject *dumps_bytes(PyObject *o)
{
    Py_ssize_t n = PyBytes_GET_SIZE(o);
    int framed = n < 65536, lenlen = n < 256 ? 1 : 4;
    Py_ssize_t head = 2 + (framed ? 9 : 0) + 1 + lenlen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, head + n + 2);
    if (!out)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    *p++ = 0x80;
    *p++ = 5;
    if (framed) {
        uint64_t frame = (uint64_t)(1 + lenlen + n + 2);
        *p++ = 0x95;
        for (int i = 0; i < 8; i++)
            *p++ = (unsigned char)(frame >> (8 * i));
    }
    *p++ = lenlen == 1 ? 'C' : 'B';
    for (int i = 0; i < lenlen; i++)
        *p++ = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(p, PyBytes_AS_STRING(o), (size_t)n);
    p += n;
    *p++ = 0x94;
    *p = '.';
    return out;
}

static PyObject *pickle_loads; /* _pickle.loads */

/* The payload of a pickle of exactly dumps_bytes' shape (every length checked against the
 * data's own size), or NULL without an exception when it is anything else. */
static PyObject *loads_bytes(const unsigned char *p, Py_ssize_t len)
{
    if (len < 2 + 1 + 1 + 2 || p[0] != 0x80 || p[1] != 5 || p[len - 2] != 0x94 || p[len - 1] != '.')
        return NULL;
    Py_ssize_t at = 2;
    if (p[2] == 0x95) {
        if (len < 11 + 4)
            return NULL;
        uint64_t frame = 0;
        for (int i = 7; i >= 0; i--)
            frame = (frame << 8) | p[3 + i];
        if (frame != (uint64_t)(len - 11))
            return NULL;
        at = 11;
    }
    uint64_t n;
    if (p[at] == 'C' && len - at >= 4) {
        n = p[at + 1];
        at += 2;
    } else if (p[at] == 'B' && len - at >= 7) {
        n = (uint64_t)p[at + 1] | (uint64_t)p[at + 2] << 8 | (uint64_t)p[at + 3] << 16 | (uint64_t)p[at + 4] << 24;
        at += 5;
    } else {
        return NULL;
    }
    if (n != (uint64_t)(len - at - 2))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)p + at, (Py_ssize_t)n);
}

static PyObject *loads(PyObject *self, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        PyObject *b = loads_bytes((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
        if (b || PyErr_Occurred())
            return b;
    }
    return PyObject_Vectorcall(pickle_loads, &data, 1, NULL);
}

static inline PyObject *dumps(PyObject *o)
{
    if (Py_TYPE(o) == &PyBytes_Type) /* plain: under BIG_BYTES */
        return dumps_bytes(o);
    PyObject *args[2] = {o, protocol};
    return PyObject_Vectorcall(pickle_dumps, args, 2, NULL);
}

static PyObject *plain_dumps(PyObject *self, PyObject *o)
{
    if (!plain(o))
        Py_RETURN_NONE;
    return dumps(o);
}

static PyObject *plain_dumps_many(PyObject *self, PyObject *objs)
{
    if (!PyList_CheckExact(objs)) {
        PyErr_SetString(PyExc_TypeError, "plain_dumps_many: a list expected");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(objs);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!plain(PyList_GET_ITEM(objs, i)))
            Py_RETURN_NONE;
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* pickling plain objects runs no Python code, so the list is as it was checked */
        PyObject *d = dumps(PyList_GET_ITEM(objs, i));
        if (!d) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, d);
    }
    return out;
}

static PyObject *plain_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain_send(send, obj)");
        return NULL;
    }
    if (!plain(args[1]))
        Py_RETURN_NONE;
    PyObject *d = dumps(args[1]);
    if (!d)
        return NULL;
    PyObject *r = PyObject_Vectorcall(args[0], &d, 1, NULL);
    int sent = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (sent != 0) {
        Py_DECREF(d);
        if (sent < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    return d;
}

#define POOL_MIN ((Py_ssize_t)1 << 20)
#define POOL_MAX ((Py_ssize_t)128 << 20) /* one 1 GiB object must not pin 1 GiB */
#define POOL_KEEP 2                      /* so at most 2 x POOL_MAX of idle memory */
static PyObject *pool[POOL_KEEP];        /* bytearrays (or NULL); GIL-protected */

static PyObject *alloc(PyObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "alloc: n must be >= 0");
        return NULL;
    }
    if (n < POOL_MIN || n > POOL_MAX)
        return PyByteArray_FromStringAndSize(NULL, n);
    int slot = -1;
    for (int i = 0; i < POOL_KEEP; i++) {
        PyObject *b = pool[i];
        if (!b) {
            if (slot < 0 || pool[slot])
                slot = i; /* an empty slot first */
            continue;
        }
        if (Py_REFCNT(b) != 1)
            continue; /* in use: something made from it is alive */
        /* Only ever shrunk, by at most half (bytearray keeps its memory then: no realloc, and
         * the pages stay faulted in). Its public size, not ob_alloc: CPython 3.15 reimplemented
         * bytearray over a bytes object, and the private allocation field no longer says this. */
        Py_ssize_t size = PyByteArray_GET_SIZE(b);
        if (n <= size && n >= size / 2) {
            if (n != size && PyByteArray_Resize(b, n) < 0)
                return NULL;
            Py_INCREF(b);
            return b;
        }
        if (slot < 0)
            slot = i; /* a free block of the wrong size: replaced unless a slot is empty */
    }
    PyObject *b = PyByteArray_FromStringAndSize(NULL, n);
    if (b && slot >= 0) {
        PyObject *old = pool[slot];
        Py_INCREF(b);
        pool[slot] = b;
        Py_XDECREF(old); /* a free bytearray: freeing it runs no Python code */
    }
    return b;
}

static PyObject *pool_clear(PyObject *self, PyObject *unused)
{
    for (int i = 0; i < POOL_KEEP; i++)
        Py_CLEAR(pool[i]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"alloc", alloc, METH_O, "alloc(n) -> bytearray of n bytes only the caller holds (reused when 1-128 MiB)"},
    {"pool_clear", pool_clear, METH_NOARGS, "pool_clear(): drop the kept blocks"},
    {"loads", loads, METH_O, "loads(data) -> pickle.loads(data) (a small bytes pickle cut out directly)"},
    {"plain_send", (PyCFunction)(void (*)(void))plain_send, METH_FASTCALL,
     "plain_send(send, obj) -> True (sent), the pickle (send refused it) or None (obj not plain)"},
    {"plain_dumps", plain_dumps, METH_O, "plain_dumps(obj) -> pickle.dumps(obj, 5) for a plain builtin, else None"},
    {"plain_dumps_many", plain_dumps_many, METH_O,
     "plain_dumps_many(objs) -> [pickle.dumps(o, 5) ...] when every object is plain, else None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kipc._native._qpickle", NULL, -1, methods};

PyMODINIT_FUNC PyInit__qpickle(void)
{
    PyObject *m = PyModule_Create(&module);
    PyObject *mod = PyImport_ImportModule("_pickle");
    if (!m || !mod)
        goto fail;
    pickle_dumps = PyObject_GetAttrString(mod, "dumps");
    pickle_loads = PyObject_GetAttrString(mod, "loads");
    Py_DECREF(mod);
    protocol = PyLong_FromLong(5);
    if (!pickle_dumps || !pickle_loads || !protocol || PyModule_AddIntConstant(m, "BIG_BYTES", (long)BIG_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ITEMS", MAX_ITEMS) < 0)
        goto fail;
    return m;
fail:
    Py_XDECREF(m);
    return NULL;
}
