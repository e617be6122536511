/*
 * kipc._native._bytes — receive a big message straight into the bytes object recv() returns.
 *
 *   Filler(total, head)     a message of `total` payload bytes, the first ones being `head`
 *   Filler.readinto(fd)     one read(2) into the free space (GIL released); returns the count
 *                           (0 = EOF); EAGAIN raises BlockingIOError; EINTR is retried
 *                           after running signal handlers (PEP 475)
 *   Filler.filled           payload bytes received so far
 *   Filler.take()           the finished bytes object (no copy); once filled == total
 *
 * Why C: Python can fill only a bytearray, and bytes(bytearray) copies, so a 256 MiB
 * message peaked at 512 MiB. Here the buffer *is* a bytes object, so take() hands it
 * over as is. Why it grows: the size comes from the peer's 4-byte length prefix, so
 * the buffer starts at FIRST (1 MiB) and doubles only when full (_PyBytes_Resize ->
 * realloc, which glibc does with mremap for blocks this big: no copy), so a forged
 * prefix followed by silence costs at most FIRST, never `total`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <unistd.h>
#include <string.h>
#include <limits.h>

#define FIRST ((Py_ssize_t)1 << 20)

typedef struct {
    PyObject_HEAD
    PyObject *buf;        /* a bytes object of `cap` bytes, the only reference to it */
    Py_ssize_t cap, filled, total;
} Filler;

static void
Filler_dealloc(Filler *self)
{
    Py_XDECREF(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Filler_init(Filler *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t total;
    Py_buffer head;
    static char *kwlist[] = {"total", "head", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ny*:Filler", kwlist, &total, &head))
        return -1;
    if (total < 0 || head.len > total) {
        PyBuffer_Release(&head);
        PyErr_SetString(PyExc_ValueError, "Filler: need 0 <= len(head) <= total");
        return -1;
    }
    Py_ssize_t cap = total < FIRST ? total : FIRST;
    if (cap < head.len)
        cap = head.len;
    Py_CLEAR(self->buf);
    self->buf = PyBytes_FromStringAndSize(NULL, cap);
    if (self->buf == NULL) {
        PyBuffer_Release(&head);
        return -1;
    }
    memcpy(PyBytes_AS_STRING(self->buf), head.buf, (size_t)head.len);
    self->cap = cap;
    self->filled = head.len;
    self->total = total;
    PyBuffer_Release(&head);
    return 0;
}

static PyObject *
Filler_readinto(Filler *self, PyObject *arg)
{
    long lfd = PyLong_AsLong(arg);
    if (lfd == -1 && PyErr_Occurred())
        return NULL;
    if (lfd < 0 || lfd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "Filler.readinto: bad file descriptor");
        return NULL;
    }
    int fd = (int)lfd;
    if (self->buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "Filler: already taken");
        return NULL;
    }
    if (self->filled == self->total)
        return PyLong_FromLong(0);
    if (self->filled == self->cap) {
        Py_ssize_t cap = self->cap > self->total / 2 ? self->total : self->cap * 2;
        if (cap < FIRST)
            cap = self->total < FIRST ? self->total : FIRST;
        if (_PyBytes_Resize(&self->buf, cap) < 0) {
            self->buf = NULL;  /* _PyBytes_Resize freed it */
            return NULL;
        }
        self->cap = cap;
    }
    for (;;) {
        char *at = PyBytes_AS_STRING(self->buf) + self->filled;
        size_t room = (size_t)(self->cap - self->filled);
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = read(fd, at, room);
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            self->filled += n;
            return PyLong_FromSsize_t(n);
        }
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

static PyObject *
Filler_take(Filler *self, PyObject *Py_UNUSED(ignored))
{
    if (self->buf == NULL || self->filled != self->total) {
        PyErr_SetString(PyExc_ValueError, "Filler.take: the message is not complete");
        return NULL;
    }
    PyObject *out = self->buf;
    self->buf = NULL;
    return out;
}

static PyObject *
Filler_get_filled(Filler *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->filled);
}

static PyObject *
Filler_get_total(Filler *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->total);
}

static PyObject *
Filler_get_capacity(Filler *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->buf == NULL ? 0 : self->cap);
}

static PyMethodDef Filler_methods[] = {
    {"readinto", (PyCFunction)Filler_readinto, METH_O, "readinto(fd) -> int: one read(2) into the free space"},
    {"take", (PyCFunction)Filler_take, METH_NOARGS, "take() -> bytes: the complete message (no copy)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Filler_getset[] = {
    {"filled", (getter)Filler_get_filled, NULL, "payload bytes received so far", NULL},
    {"total", (getter)Filler_get_total, NULL, "payload bytes of the message", NULL},
    {"capacity", (getter)Filler_get_capacity, NULL, "bytes allocated now", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FillerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kipc._native._bytes.Filler",
    .tp_basicsize = sizeof(Filler),
    .tp_dealloc = (destructor)Filler_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Filler(total, head): receive a message of total bytes into a growing bytes object",
    .tp_methods = Filler_methods,
    .tp_getset = Filler_getset,
    .tp_init = (initproc)Filler_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._bytes", "big messages received straight into bytes", -1, NULL,
};

PyMODINIT_FUNC
PyInit__bytes(void)
{
    if (PyType_Ready(&FillerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FillerType);
    if (PyModule_AddObject(m, "Filler", (PyObject *)&FillerType) < 0) {
        Py_DECREF(&FillerType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "FIRST", (long)FIRST);
    return m;
}
