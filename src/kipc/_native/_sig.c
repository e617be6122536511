/*
 * kipc._native._sig — the signal calls the stdlib lacks.
 *
 *   sigqueue(pid, signo, value) -> None      queue a signal with an int payload
 *
 * Kept tiny on purpose: everything else about signals is Python (kipc/sync/signals.py).
 * Errors raise OSError with errno; the Python layer maps them to kipc errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include <errno.h>

static PyObject *
kipc_sigqueue(PyObject *self, PyObject *args)
{
    int pid, signo;
    long long value;
    if (!PyArg_ParseTuple(args, "iiL:sigqueue", &pid, &signo, &value))
        return NULL;
    union sigval sv;
    sv.sival_ptr = NULL;
    sv.sival_int = (int)value;
    if (value > INT32_MAX || value < INT32_MIN) {
        /* sival_ptr carries 64 bits on LP64; receivers read ssi_ptr/si_ptr for the full value */
        sv.sival_ptr = (void *)(intptr_t)value;
    }
    if (sigqueue((pid_t)pid, signo, sv) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sigqueue", kipc_sigqueue, METH_VARARGS, "sigqueue(pid, signo, value): queue a signal with an int payload"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kipc._native._sig", "signal calls the stdlib lacks", -1, methods,
};

PyMODINIT_FUNC
PyInit__sig(void)
{
    return PyModule_Create(&module);
}
