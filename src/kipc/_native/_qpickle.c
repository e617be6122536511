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
 * Why C: in Python the type test (set(map(type, ...)) and friends) costs as much as the
 * pickling itself (~250 ns each for a 3-tuple on the project's box); here it is a few loads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static inline PyObject *dumps(PyObject *o)
{
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

static PyMethodDef methods[] = {
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
    Py_DECREF(mod);
    protocol = PyLong_FromLong(5);
    if (!pickle_dumps || !protocol || PyModule_AddIntConstant(m, "BIG_BYTES", (long)BIG_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ITEMS", MAX_ITEMS) < 0)
        goto fail;
    return m;
fail:
    Py_XDECREF(m);
    return NULL;
}
