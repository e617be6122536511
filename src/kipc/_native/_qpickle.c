/*
 * kipc._native._qpickle — kipc.Queue's test-and-pickle for plain builtins, in one C call.
 *
 *   plain_dumps(obj) -> bytes | None
 *       pickle.dumps(obj, 5) when obj is "plain", else None. Plain: an exact bytes shorter
 *       than BIG_BYTES, str, int, float, bool or None; or an exact tuple, list or dict of at
 *       most MAX_ITEMS entries whose items (keys and values) are exact str, bytes, int, float,
 *       bool or None. The C pickler writes such objects itself — it consults no dispatch
 *       table, reducer or copyreg entry for exact builtins — so the result is byte for byte
 *       what multiprocessing's ForkingPickler.dumps(obj, 5) writes; this module writes those
 *       bytes itself (enc, dumps_bytes) where it can, and calls pickle.dumps otherwise.
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
 *       against its own length: the data comes from shared memory) is cut out directly, and
 *       one of enc's shapes is read directly (dec); anything else goes to pickle.loads.
 *   loads_many(datas: list) -> list
 *       [loads(d) for d in datas] (get_many's batch, in one call).
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
 *   getter(recv_into, alloc, unpack, plain) -> get(deadline)
 *       Queue.get's receive-and-unpickle, one C call (at getter, below).
 *
 * Why C: in Python the type test (set(map(type, ...)) and friends) costs as much as the
 * pickling itself (~250 ns each for a 3-tuple on the project's box); here it is a few loads.
 * And a Pickler or Unpickler per call costs ~300 ns for a 3-tuple, the stores ~40.
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


/* ---- pickle.dumps(obj, 5) of a plain object other than bytes, written out directly --------
 * A Pickler per call (its memo table, output buffer, frame bookkeeping) is most of the cost of
 * pickling a small tuple: ~300 ns for (1, "a", 2.0), against ~40 ns for these stores. The bytes
 * are exactly those the C pickler (Modules/_pickle.c, save()) writes for an exact builtin, so
 * the receiver needs nothing of ours: PROTO 5; FRAME over the rest when it is 4 bytes or more;
 * None/True/False as N, NEWTRUE, NEWFALSE; an int as BININT1/BININT2/BININT (another int: the
 * general path); a float as BINFLOAT (big-endian); str and bytes as their SHORT_ or 4-byte-length
 * opcode then MEMOIZE, or BINGET of the first occurrence of the same object; a tuple as its items
 * then TUPLE1-3 (MARK .. TUPLE from 4; EMPTY_TUPLE, unmemoized), then MEMOIZE; a list as
 * EMPTY_LIST MEMOIZE then APPEND (1 item) or MARK .. APPENDS; a dict as EMPTY_DICT MEMOIZE
 * then k v SETITEM (1 pair) or MARK .. SETITEMS. Only a pickle that stays in one frame under
 * pickle's 64 KiB frame target is written here (pickle splits bigger ones, and writes big
 * payloads outside frames): anything bigger, a str that is not valid UTF-8, or an int beyond
 * 32 bits makes enc() answer 1 and dumps() calls pickle.dumps. A test compares the two over
 * every shape and edge. No Python code runs here (exact builtins only; the UTF-8 of a str is
 * cached in it, as pickle caches it), so a static buffer under the GIL is safe. */
#define WBUF (2 + 9 + 65535) /* PROTO, the FRAME header, a frame under pickle's 64 KiB target */
#define MEMO_MAX (2 * MAX_ITEMS + 1)
static unsigned char wbuf[WBUF];

typedef struct {
    unsigned char *p, *end;
    int n;
    PyObject *memo[MEMO_MAX]; /* the memoized objects, by index (borrowed: the caller holds obj) */
} W;

#define NEED(w, k)                         \
    do {                                   \
        if ((w)->end - (w)->p < (k))       \
            return 1; /* too big for here */ \
    } while (0)

static inline void put_le(unsigned char *p, uint64_t v, int k)
{
    for (int i = 0; i < k; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline int w_memoize(W *w, PyObject *o)
{
    NEED(w, 1);
    if (w->n >= MEMO_MAX)
        return 1;
    w->memo[w->n++] = o;
    *w->p++ = 0x94; /* MEMOIZE */
    return 0;
}

/* 0 written, 1 not here (no exception) */
static int w_atom(W *w, PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None || o == Py_True || o == Py_False) {
        NEED(w, 1);
        *w->p++ = o == Py_None ? 'N' : o == Py_True ? 0x88 : 0x89;
        return 0;
    }
    if (t == &PyLong_Type) {
        int over;
        long v = PyLong_AsLongAndOverflow(o, &over);
        if (over || v > 0x7fffffffL || v < -0x7fffffffL - 1)
            return 1; /* LONG1: left to pickle */
        NEED(w, 5);
        if (v >= 0 && v <= 0xff) {
            *w->p++ = 'K';
            *w->p++ = (unsigned char)v;
        } else if (v >= 0 && v <= 0xffff) {
            *w->p++ = 'M';
            put_le(w->p, (uint64_t)v, 2);
            w->p += 2;
        } else {
            *w->p++ = 'J';
            put_le(w->p, (uint64_t)(uint32_t)(int32_t)v, 4);
            w->p += 4;
        }
        return 0;
    }
    if (t == &PyFloat_Type) {
        NEED(w, 9);
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        *w->p++ = 'G';
        for (int i = 7; i >= 0; i--)
            *w->p++ = (unsigned char)(bits >> (8 * i));
        return 0;
    }
    /* str and bytes: memoized, so a second occurrence of the same object is a BINGET */
    for (int i = 0; i < w->n; i++)
        if (w->memo[i] == o) {
            NEED(w, 2);
            *w->p++ = 'h';
            *w->p++ = (unsigned char)i; /* i < MEMO_MAX < 256 */
            return 0;
        }
    const char *data;
    Py_ssize_t n;
    unsigned char op1, op4;
    if (t == &PyUnicode_Type) {
        data = PyUnicode_AsUTF8AndSize(o, &n);
        if (!data) { /* a lone surrogate: pickle writes it with surrogatepass */
            PyErr_Clear();
            return 1;
        }
        op1 = 0x8c, op4 = 'X'; /* SHORT_BINUNICODE, BINUNICODE */
    } else if (t == &PyBytes_Type) {
        data = PyBytes_AS_STRING(o);
        n = PyBytes_GET_SIZE(o);
        op1 = 'C', op4 = 'B'; /* SHORT_BINBYTES, BINBYTES */
    } else {
        return 1;
    }
    NEED(w, 5 + n);
    if (n <= 0xff) {
        *w->p++ = op1;
        *w->p++ = (unsigned char)n;
    } else {
        *w->p++ = op4;
        put_le(w->p, (uint64_t)n, 4);
        w->p += 4;
    }
    memcpy(w->p, data, (size_t)n);
    w->p += n;
    return w_memoize(w, o);
}

#define W_TRY(x)                  \
    do {                          \
        int rc_ = (x);            \
        if (rc_)                  \
            return rc_;           \
    } while (0)
#define W_OP(w, c)        \
    do {                  \
        NEED(w, 1);       \
        *(w)->p++ = (c);  \
    } while (0)

static int w_obj(W *w, PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(o);
        if (n == 0) {
            W_OP(w, ')');
            return 0;
        }
        if (n > 3)
            W_OP(w, '(');
        for (Py_ssize_t i = 0; i < n; i++)
            W_TRY(w_atom(w, PyTuple_GET_ITEM(o, i)));
        W_OP(w, n > 3 ? 't' : (unsigned char)(0x85 + n - 1));
        return w_memoize(w, o);
    }
    if (t == &PyList_Type) {
        Py_ssize_t n = PyList_GET_SIZE(o);
        W_OP(w, ']');
        W_TRY(w_memoize(w, o));
        if (n > 1)
            W_OP(w, '(');
        for (Py_ssize_t i = 0; i < n; i++)
            W_TRY(w_atom(w, PyList_GET_ITEM(o, i)));
        if (n)
            W_OP(w, n > 1 ? 'e' : 'a');
        return 0;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0;
        PyObject *k, *v;
        W_OP(w, '}');
        W_TRY(w_memoize(w, o));
        if (n > 1)
            W_OP(w, '(');
        while (PyDict_Next(o, &pos, &k, &v)) {
            W_TRY(w_atom(w, k));
            W_TRY(w_atom(w, v));
        }
        if (n)
            W_OP(w, n > 1 ? 'u' : 's');
        return 0;
    }
    return w_atom(w, o);
}

/* The pickle of a plain object (not a top-level bytes: dumps_bytes), or NULL: with an
 * exception (out of memory), or without one when pickle.dumps must write it. */
static PyObject *enc(PyObject *o)
{
    W w;
    w.p = wbuf + 11; /* after PROTO and room for the FRAME header */
    w.end = wbuf + WBUF;
    w.n = 0;
    if (w_obj(&w, o) || w.p == w.end)
        return NULL;
    *w.p++ = '.';
    Py_ssize_t frame = w.p - (wbuf + 11);
    unsigned char *start = wbuf;
    if (frame >= 4) {
        wbuf[2] = 0x95;
        put_le(wbuf + 3, (uint64_t)frame, 8);
    } else { /* pickle drops a frame under 4 bytes */
        start = wbuf + 9;
    }
    start[0] = 0x80;
    start[1] = 5;
    return PyBytes_FromStringAndSize((const char *)start, w.p - start);
}

static PyObject *pickle_loads; /* _pickle.loads */

/* Where a protocol-5 pickle's opcodes start: after PROTO (2), or after a FRAME (11) that must
 * cover exactly the rest of the data; -1 for a FRAME that does not, or data shorter than
 * `min_framed` with one. The caller has checked that p[0..2] exist. */
static Py_ssize_t body_start(const unsigned char *p, Py_ssize_t len, Py_ssize_t min_framed)
{
    if (p[2] != 0x95)
        return 2;
    if (len < min_framed)
        return -1;
    uint64_t frame = 0;
    for (int i = 7; i >= 0; i--)
        frame = (frame << 8) | p[3 + i];
    return frame == (uint64_t)(len - 11) ? 11 : -1;
}

/* The payload of a pickle of exactly dumps_bytes' shape (every length checked against the
 * data's own size), or NULL without an exception when it is anything else. */
static PyObject *loads_bytes(const unsigned char *p, Py_ssize_t len)
{
    if (len < 2 + 1 + 1 + 2 || p[0] != 0x80 || p[1] != 5 || p[len - 2] != 0x94 || p[len - 1] != '.')
        return NULL;
    Py_ssize_t at = body_start(p, len, 11 + 4);
    if (at < 0)
        return NULL;
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


/* ---- pickle.loads of what enc() writes, read directly --------------------------------------
 * An Unpickler per call is most of the cost of unpickling a small tuple (~270 ns). dec() reads
 * the opcodes enc() writes (and dumps_bytes' shapes, which loads_bytes cuts out before) with
 * pickle's meaning for each, one MARK level deep, from bytes that came from shared memory: every
 * length is checked against the data's own size, the FRAME must cover exactly the rest, STOP
 * must be the last byte with one object on the stack. Anything else (another opcode, a second
 * MARK level, bad UTF-8, a memo index out of range, an unhashable key...) answers "not here"
 * and pickle.loads reads the whole message instead: the result, or the error, is pickle's. */
#define DSTACK (2 * MAX_ITEMS + 8)

static PyObject *dec(const unsigned char *p, Py_ssize_t len)
{
    PyObject *stack[DSTACK], *memo[MEMO_MAX];
    int sp = 0, nm = 0, mark = -1;
    Py_ssize_t at, end = len - 1; /* the STOP byte */
    PyObject *out = NULL;
    if (len < 4 || p[0] != 0x80 || p[1] != 5 || p[end] != '.')
        return NULL;
    if ((at = body_start(p, len, 11 + 2)) < 0)
        return NULL;
#define AVAIL(k) (end - at >= (k)) /* k bytes of arguments before STOP */
#define PUSH(x)                      \
    do {                             \
        PyObject *x_ = (x);          \
        if (!x_)                     \
            goto fail;               \
        if (sp == DSTACK) {          \
            Py_DECREF(x_);           \
            goto fail;               \
        }                            \
        stack[sp++] = x_;            \
    } while (0)
    while (at < end) {
        unsigned char op = p[at++];
        Py_ssize_t n;
        switch (op) {
        case 'N':
            PUSH(Py_NewRef(Py_None));
            break;
        case 0x88:
            PUSH(Py_NewRef(Py_True));
            break;
        case 0x89:
            PUSH(Py_NewRef(Py_False));
            break;
        case 'K':
            if (!AVAIL(1))
                goto fail;
            PUSH(PyLong_FromLong(p[at]));
            at += 1;
            break;
        case 'M':
            if (!AVAIL(2))
                goto fail;
            PUSH(PyLong_FromLong((long)p[at] | (long)p[at + 1] << 8));
            at += 2;
            break;
        case 'J':
            if (!AVAIL(4))
                goto fail;
            PUSH(PyLong_FromLong((long)(int32_t)((uint32_t)p[at] | (uint32_t)p[at + 1] << 8 |
                                                 (uint32_t)p[at + 2] << 16 | (uint32_t)p[at + 3] << 24)));
            at += 4;
            break;
        case 'G': {
            if (!AVAIL(8))
                goto fail;
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++)
                bits = (bits << 8) | p[at + i];
            double d;
            memcpy(&d, &bits, 8);
            PUSH(PyFloat_FromDouble(d));
            at += 8;
            break;
        }
        case 0x8c: /* SHORT_BINUNICODE */
        case 'C':  /* SHORT_BINBYTES */
        case 'X':  /* BINUNICODE */
        case 'B':  /* BINBYTES */
            if (op == 0x8c || op == 'C') {
                if (!AVAIL(1))
                    goto fail;
                n = p[at];
                at += 1;
            } else {
                if (!AVAIL(4))
                    goto fail;
                n = (Py_ssize_t)((uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 |
                                 (uint32_t)p[at + 3] << 24);
                at += 4;
            }
            if (!AVAIL(n))
                goto fail;
            if (op == 0x8c || op == 'X')
                PUSH(PyUnicode_DecodeUTF8((const char *)p + at, n, "surrogatepass"));
            else
                PUSH(PyBytes_FromStringAndSize((const char *)p + at, n));
            at += n;
            break;
        case 0x94: /* MEMOIZE */
            if (sp == 0 || nm == MEMO_MAX)
                goto fail;
            memo[nm++] = Py_NewRef(stack[sp - 1]);
            break;
        case 'h': /* BINGET */
            if (!AVAIL(1) || p[at] >= nm)
                goto fail;
            PUSH(Py_NewRef(memo[p[at]]));
            at += 1;
            break;
        case ')':
            PUSH(PyTuple_New(0));
            break;
        case ']':
            PUSH(PyList_New(0));
            break;
        case '}':
            PUSH(PyDict_New());
            break;
        case '(':
            if (mark >= 0)
                goto fail; /* nested: pickle's */
            mark = sp;
            break;
        case 0x85: /* TUPLE1-3 */
        case 0x86:
        case 0x87:
        case 't': {
            int k = op == 't' ? (mark < 0 ? -1 : sp - mark) : op - 0x85 + 1;
            if (k < 0 || k > sp)
                goto fail;
            PyObject *tup = PyTuple_New(k);
            if (!tup)
                goto fail;
            for (int i = 0; i < k; i++)
                PyTuple_SET_ITEM(tup, i, stack[sp - k + i]); /* the references move */
            sp -= k;
            if (op == 't')
                mark = -1;
            if (sp == DSTACK) { /* only after an empty MARK .. TUPLE */
                Py_DECREF(tup);
                goto fail;
            }
            stack[sp++] = tup;
            break;
        }
        case 'a': /* APPEND */
            if (sp < 2 || !PyList_CheckExact(stack[sp - 2]) || (mark >= 0 && sp - 2 < mark))
                goto fail;
            if (PyList_Append(stack[sp - 2], stack[sp - 1]) < 0)
                goto fail;
            Py_DECREF(stack[--sp]);
            break;
        case 'e': /* APPENDS */
            if (mark < 1 || !PyList_CheckExact(stack[mark - 1]))
                goto fail;
            for (int i = mark; i < sp; i++)
                if (PyList_Append(stack[mark - 1], stack[i]) < 0)
                    goto fail;
            while (sp > mark)
                Py_DECREF(stack[--sp]);
            mark = -1;
            break;
        case 's': /* SETITEM */
            if (sp < 3 || !PyDict_CheckExact(stack[sp - 3]) || (mark >= 0 && sp - 3 < mark))
                goto fail;
            if (PyDict_SetItem(stack[sp - 3], stack[sp - 2], stack[sp - 1]) < 0)
                goto fail;
            Py_DECREF(stack[--sp]);
            Py_DECREF(stack[--sp]);
            break;
        case 'u': /* SETITEMS */
            if (mark < 1 || (sp - mark) % 2 || !PyDict_CheckExact(stack[mark - 1]))
                goto fail;
            for (int i = mark; i < sp; i += 2)
                if (PyDict_SetItem(stack[mark - 1], stack[i], stack[i + 1]) < 0)
                    goto fail;
            while (sp > mark)
                Py_DECREF(stack[--sp]);
            mark = -1;
            break;
        default:
            goto fail;
        }
    }
#undef AVAIL
#undef PUSH
    if (sp != 1 || mark >= 0)
        goto fail;
    out = stack[--sp];
fail:
    while (sp > 0)
        Py_DECREF(stack[--sp]);
    while (nm > 0)
        Py_DECREF(memo[--nm]);
    if (!out && PyErr_Occurred()) /* pickle.loads meets the same and says it its way */
        PyErr_Clear();
    return out;
}

static PyObject *loads(PyObject *self, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        PyObject *b = loads_bytes(p, n);
        if (b || PyErr_Occurred())
            return b;
        if (n <= WBUF && (b = dec(p, n)) != NULL)
            return b;
    }
    return PyObject_Vectorcall(pickle_loads, &data, 1, NULL);
}

static inline PyObject *dumps(PyObject *o)
{
    if (Py_TYPE(o) == &PyBytes_Type) /* plain: under BIG_BYTES */
        return dumps_bytes(o);
    PyObject *d = enc(o);
    if (d || PyErr_Occurred())
        return d;
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

/* get_many's batch: None when a message is not a pickle (an out-of-band one, first byte 0x42:
 * queues.py decodes those), so the caller's slower loop sees exactly what it saw before. */
static PyObject *loads_many(PyObject *self, PyObject *datas)
{
    if (!PyList_CheckExact(datas)) {
        PyErr_SetString(PyExc_TypeError, "loads_many: a list expected");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(datas);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyList_GET_ITEM(datas, i);
        if (!PyBytes_CheckExact(d) || PyBytes_GET_SIZE(d) == 0 || PyBytes_AS_STRING(d)[0] == 0x42)
            Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* loads may run Python code (pickle.loads of a general pickle), but datas is ours alone */
        PyObject *o = loads(NULL, PyList_GET_ITEM(datas, i));
        if (!o) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, o);
    }
    return out;
}

/* getter(recv_into, alloc, unpack, plain) -> get(deadline): Queue.get's body after its checks.
 * get(deadline) calls recv_into(alloc, deadline, 2); a pickle (bytes whose first byte is not
 * 0x42, an out-of-band message's) of a plain queue is read by loads, anything else (a view
 * into the ring, an out-of-band message, a queue with its own loads=) goes to unpack(data).
 * A builtin function bound to the tuple (recv_into, alloc, unpack, plain): one C call per get
 * instead of a call more and four tests in Python (~50 ns of ~250). None of the four refers
 * to the Queue, so the queue object is freed (and its ring removed) as soon as it is dropped. */
static PyObject *two; /* recv_into's view=2 */

static PyObject *get_call(PyObject *st, PyObject *deadline)
{
    PyObject *args[3] = {PyTuple_GET_ITEM(st, 1), deadline, two};
    PyObject *data = PyObject_Vectorcall(PyTuple_GET_ITEM(st, 0), args, 3, NULL);
    if (!data)
        return NULL;
    PyObject *o;
    if (PyTuple_GET_ITEM(st, 3) == Py_True && PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0 &&
        PyBytes_AS_STRING(data)[0] != 0x42)
        o = loads(NULL, data);
    else
        o = PyObject_Vectorcall(PyTuple_GET_ITEM(st, 2), &data, 1, NULL);
    Py_DECREF(data);
    return o;
}

static PyMethodDef get_def = {"get", get_call, METH_O, "get(deadline) -> object (see _qpickle.getter)"};

static PyObject *make_getter(PyObject *self, PyObject *args)
{
    PyObject *recv_into, *alloc, *unpack;
    int plain;
    if (!PyArg_ParseTuple(args, "OOOp:getter", &recv_into, &alloc, &unpack, &plain))
        return NULL;
    PyObject *st = Py_BuildValue("(OOOO)", recv_into, alloc, unpack, plain ? Py_True : Py_False);
    if (!st)
        return NULL;
    PyObject *f = PyCFunction_New(&get_def, st);
    Py_DECREF(st);
    return f;
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
    {"loads", loads, METH_O, "loads(data) -> pickle.loads(data) (small plain pickles read directly)"},
    {"getter", make_getter, METH_VARARGS, "getter(recv_into, alloc, unpack, plain) -> get(deadline): Queue.get's C part"},
    {"loads_many", loads_many, METH_O, "loads_many(datas) -> [loads(d) ...], or None when one is not a pickle"},
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
    two = PyLong_FromLong(2);
    if (!two || !pickle_dumps || !pickle_loads || !protocol || PyModule_AddIntConstant(m, "BIG_BYTES", (long)BIG_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ITEMS", MAX_ITEMS) < 0)
        goto fail;
    return m;
fail:
    Py_XDECREF(m);
    return NULL;
}
