/*
 * kipc_ring.h — the C API of kipc's ring:// channel: C programs are peers of Python's
 * kipc.open("ring://NAME") (same object, same header, same algorithm: ring_core.c, the code
 * Python's binding runs).
 *
 * Build (header-only; Linux, glibc, gcc or clang, C11):
 *
 *     gcc -O2 prog.c -I"$(python -m kipc --include)" -lpthread
 *
 * Include it before any system header (it defines _GNU_SOURCE), or compile with -D_GNU_SOURCE.
 * It carries the implementation: in a program of several .c files, include it plainly in exactly
 * one and `#define KIPC_RING_DECLARE_ONLY` before including it in the others.
 *
 * CONTRACT
 *  - Names: kipc_ring_open("NAME") is ring://NAME, the POSIX shm object /dev/shm/kipc.ring.NAME.
 *    NAME: 1..200 characters of [A-Za-z0-9_.@+-], not starting with '.' or '-', no "..".
 *  - Create (opt.create = KIPC_RING_CREATE): exclusive (KIPC_EEXIST if the name is taken;
 *    KIPC_RING_IF_MISSING attaches then), mode 0600 whatever the umask, capacity rounded up to a
 *    power of two in [4096, 2^40] (0: 1 MiB), the pages reserved now (KIPC_ENOSPC when /dev/shm
 *    cannot hold them), and an owner record like Python's (so `kipc ls/gc` know it; persist: none).
 *  - Attach: refused (KIPC_EPERM) when the object is owned by another uid or has group/other mode
 *    bits; (KIPC_EBADOBJECT) when it is not a regular file, has a wrong size, or no kipc ring
 *    header of this version (a creator initialising gets 0.5 s to publish it).
 *  - Close: kipc_ring_close by the creating process marks the ring closed (peers get
 *    KIPC_ECLOSED once it is empty), removes the name and the owner record (unless persist);
 *    openers only unmap. Every open handle must be closed, in the process that opened it.
 *  - Messages: boundaries kept; FIFO; any size (over kipc_ring_max_loan() bytes they travel in
 *    fragments and are only ever received whole). send blocks while the ring is full; recv while
 *    it is empty; never drops.
 *  - Timeouts: every blocking call takes timeout_s: < 0 waits forever, 0 does not wait
 *    (KIPC_EWOULDBLOCK), t > 0 waits at most t seconds (KIPC_ETIMEOUT). NaN: KIPC_EINVAL.
 *  - recv copies into the caller's buffer; a message longer than `cap` stays (KIPC_ETOOBIG,
 *    *len = its length) for the next recv on the handle.
 *  - recv_view: a pointer into the ring; the message, and every other consumer of the ring,
 *    wait until kipc_ring_release (which consumes it) — keep views short. Only messages up to
 *    kipc_ring_max_loan() bytes are viewed in place; a bigger one is reassembled in memory the
 *    handle owns until release. One view per handle at a time.
 *  - loan/commit: kipc_ring_loan(n) reserves n <= kipc_ring_max_loan() bytes in place and holds
 *    the producer lock; kipc_ring_commit(m <= n) publishes m bytes as one message,
 *    kipc_ring_abort publishes nothing. One loan per handle at a time.
 *  - Threads: several threads may send on one handle; a handle that receives (recv, views,
 *    loans) belongs to one thread at a time (give each thread its own handle: they are cheap).
 *    Never close a handle while another thread is in a call on it. Fork: a child opens its own
 *    handle (a handle is per process).
 *  - Crash safety and hostile peers: as for Python peers (ring_core.h, THEORY: crash cases,
 *    trust nothing in shared memory): a peer SIGKILLed anywhere neither wedges the ring nor
 *    delivers a torn message; a corrupt or truncated ring gives KIPC_EBADOBJECT, and
 *    kipc_ring_detail() says what was found. The SIGBUS handler is installed as for Python.
 *  - Errors are negative codes (kipc_ring_strerror names them); nothing is printed.
 */
#ifndef KIPC_RING_H
#define KIPC_RING_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    KIPC_OK = 0,
    KIPC_ETIMEOUT = -1,    /* the timeout passed */
    KIPC_EWOULDBLOCK = -2, /* timeout 0 and it would have waited */
    KIPC_ECLOSED = -3,     /* closed by its creator (recv: and empty), or this handle is closed */
    KIPC_EBADOBJECT = -4,  /* not a kipc ring, corrupt, or truncated by another process */
    KIPC_EINVAL = -5,      /* a bad argument (name, size, timeout, state) */
    KIPC_ETOOBIG = -6,     /* recv: the message is longer than the buffer (it stays); send: over 2^46 bytes */
    KIPC_EEXIST = -7,      /* create: the name exists */
    KIPC_ENOENT = -8,      /* attach: no such ring */
    KIPC_EPERM = -9,       /* another uid's ring, group/other mode bits, or the OS said EACCES */
    KIPC_ENOSPC = -10,     /* /dev/shm cannot hold the ring */
    KIPC_ENOMEM = -11,     /* out of memory */
    KIPC_EOS = -12,        /* another system error (errno is kept; kipc_ring_detail says which) */
    KIPC_EBUSY = -13,      /* a view or loan of this handle is still open */
};

enum { KIPC_RING_ATTACH = 0, KIPC_RING_CREATE = 1, KIPC_RING_IF_MISSING = 2 };

typedef struct {
    int create;        /* KIPC_RING_ATTACH, KIPC_RING_CREATE or KIPC_RING_IF_MISSING */
    uint64_t capacity; /* data bytes on create (rounded up to a power of two); 0: 1 MiB */
    double spin_us;    /* microseconds a waiter spins before it sleeps; < 0: 50 (Python's default) */
    int persist;       /* create: close keeps the object and no owner record is written */
} kipc_ring_options;

typedef struct kipc_ring kipc_ring;

/* Open ring://name (opt NULL: attach with defaults). *out is set on KIPC_OK only. */
int kipc_ring_open(const char *name, const kipc_ring_options *opt, kipc_ring **out);
/* Close the handle (creator: mark closed, unlink, forget the owner record). NULL is a no-op. */
int kipc_ring_close(kipc_ring *r);
int kipc_ring_send(kipc_ring *r, const void *data, size_t len, double timeout_s);
int kipc_ring_recv(kipc_ring *r, void *buf, size_t cap, size_t *len, double timeout_s);
int kipc_ring_recv_view(kipc_ring *r, const void **data, size_t *len, double timeout_s);
int kipc_ring_release(kipc_ring *r); /* consume the viewed message */
int kipc_ring_loan(kipc_ring *r, size_t n, void **buf, double timeout_s);
int kipc_ring_commit(kipc_ring *r, size_t n);
int kipc_ring_abort(kipc_ring *r);
uint64_t kipc_ring_capacity(const kipc_ring *r);
size_t kipc_ring_max_loan(const kipc_ring *r); /* the largest loan, view in place, or single record */
uint64_t kipc_ring_qsize(const kipc_ring *r);   /* committed messages not yet received */
const char *kipc_ring_strerror(int err);
/* What the last failed call on r found, or ""; r NULL: why this thread's last kipc_ring_open failed. */
const char *kipc_ring_detail(const kipc_ring *r);

#ifdef __cplusplus
}
#endif

/* ======================================================================================== */
#ifndef KIPC_RING_DECLARE_ONLY

/* The core is compiled into this translation unit. Its internal names (generic ones like
 * publish, advance, OK) are renamed kipc__* here and #undef'd at the end of this section, so a
 * program's own identifiers never clash with them; only kipc_*, KIPC_*, rc_* and ring_core's
 * include guard stay visible. */
#define advance kipc__advance
#define check_cons kipc__check_cons
#define check_prod kipc__check_prod
#define claim_clear kipc__claim_clear
#define claim_set kipc__claim_set
#define claimant_alive kipc__claimant_alive
#define closing kipc__closing
#define corrupt kipc__corrupt
#define cpu_relax kipc__cpu_relax
#define foreign_claim kipc__foreign_claim
#define frag_abort kipc__frag_abort
#define futex_wake_all kipc__futex_wake_all
#define is_broken kipc__is_broken
#define lock_ring kipc__lock_ring
#define lock_word_bad kipc__lock_word_bad
#define mono kipc__mono
#define mono_ns kipc__mono_ns
#define pclaim_end kipc__pclaim_end
#define pclaim_live kipc__pclaim_live
#define place kipc__place
#define probe_producer kipc__probe_producer
#define proc_alive kipc__proc_alive
#define publish kipc__publish
#define read_stat kipc__read_stat
#define repair_cons kipc__repair_cons
#define repair_prod kipc__repair_prod
#define room kipc__room
#define slot_register kipc__slot_register
#define slot_unregister kipc__slot_unregister
#define unlock_ring kipc__unlock_ring
#define wait_word kipc__wait_word
#define wake_all kipc__wake_all
#define lo32 kipc__lo32
#define rec_size kipc__rec_size
#define rec_prefetch kipc__rec_prefetch
#define mutex_kind kipc__mutex_kind
#define slot_broken kipc__slot_broken
#define slot_base kipc__slot_base
#define slot_size kipc__slot_size
#define prev_bus kipc__prev_bus
#define on_sigbus kipc__on_sigbus
#define install_sigbus kipc__install_sigbus
#define held kipc__held
#define nheld kipc__nheld
#define held_add kipc__held_add
#define held_has kipc__held_has
#define held_drop kipc__held_drop
#define gather kipc__gather
#define gather_big kipc__gather_big
#define produce_frag_nb kipc__produce_frag_nb
#define take_locked kipc__take_locked
#define ring_hdr kipc__ring_hdr
#define rec kipc__rec
#define OK kipc__OK
#define R_TIMEOUT kipc__R_TIMEOUT
#define R_CLOSED kipc__R_CLOSED
#define R_BROKEN kipc__R_BROKEN
#define R_LOCAL kipc__R_LOCAL
#define R_EMPTY kipc__R_EMPTY
#define R_CORRUPT kipc__R_CORRUPT
#define R_MISMATCH kipc__R_MISMATCH
#define R_HELD kipc__R_HELD
#define R_ERR kipc__R_ERR
#include "../ring/ring_core.c"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

struct kipc_ring {
    rc_ring c;
    char name[201];
    char path[256];
    int owner, persist;
    int view;             /* a view is open: 1 in place (cons_lock held), 2 a held message */
    uint64_t view_next;   /* in place: head after the viewed record */
    int loan;             /* a loan is open (prod_lock held) */
    unsigned char *loan_ptr;
    uint64_t loan_size, loan_pad, loan_tail;
    unsigned char *held;  /* a reassembled message recv could not hand out (ETOOBIG) or viewed */
    uint64_t held_len;
    char detail[256];
};

#define KIPC__PAGE 4096u
#define KIPC__ATTACH_WAIT 0.5

const char *kipc_ring_strerror(int err)
{
    switch (err) {
    case KIPC_OK: return "ok";
    case KIPC_ETIMEOUT: return "timed out";
    case KIPC_EWOULDBLOCK: return "would block";
    case KIPC_ECLOSED: return "channel closed";
    case KIPC_EBADOBJECT: return "not a usable kipc ring";
    case KIPC_EINVAL: return "invalid argument";
    case KIPC_ETOOBIG: return "message too large";
    case KIPC_EEXIST: return "already exists";
    case KIPC_ENOENT: return "no such ring";
    case KIPC_EPERM: return "permission denied";
    case KIPC_ENOSPC: return "no space in /dev/shm";
    case KIPC_ENOMEM: return "out of memory";
    case KIPC_EOS: return "system error";
    case KIPC_EBUSY: return "a view or loan is open on this handle";
    default: return "unknown kipc error";
    }
}

static _Thread_local char kipc__open_detail[256]; /* kipc_ring_detail(NULL) */

const char *kipc_ring_detail(const kipc_ring *r) { return r ? r->detail : kipc__open_detail; }
uint64_t kipc_ring_capacity(const kipc_ring *r) { return r->c.cap; }
size_t kipc_ring_max_loan(const kipc_ring *r) { return (size_t)r->c.frag_max; }
uint64_t kipc_ring_qsize(const kipc_ring *r)
{
    return atomic_load(&r->c.hdr->msgs_in) - atomic_load(&r->c.hdr->msgs_out);
}

static int kipc__fail(kipc_ring *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int kipc__fail(kipc_ring *r, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
    return err;
}

static int kipc__errno(int e)
{
    switch (e) {
    case EEXIST: return KIPC_EEXIST;
    case ENOENT: return KIPC_ENOENT;
    case EACCES: case EPERM: return KIPC_EPERM;
    case ENOSPC: case EFBIG: return KIPC_ENOSPC;
    case ENOMEM: return KIPC_ENOMEM;
    case ELOOP: return KIPC_EBADOBJECT; /* a symlink planted under the name (O_NOFOLLOW) */
    default: return KIPC_EOS;
    }
}

/* A core state (ring_core.h R_*) as an API error; timeout 0 turns a timeout into WOULDBLOCK. */
static int kipc__state(kipc_ring *r, int rc, double timeout_s)
{
    switch (rc) {
    case OK: return KIPC_OK;
    case R_TIMEOUT: case R_EMPTY:
        if (timeout_s == 0)
            return kipc__fail(r, KIPC_EWOULDBLOCK, "would block");
        return kipc__fail(r, KIPC_ETIMEOUT, "timed out after %g s", timeout_s);
    case R_CLOSED: return kipc__fail(r, KIPC_ECLOSED, "closed by its creator");
    case R_LOCAL: return kipc__fail(r, KIPC_ECLOSED, "closed by this process");
    case R_BROKEN:
        return kipc__fail(r, KIPC_EBADOBJECT, is_broken(&r->c) ? "truncated by another process"
                                                               : "marked broken by a peer");
    case R_CORRUPT: return kipc__fail(r, KIPC_EBADOBJECT, "corrupt: %s", r->c.why);
    case R_HELD: return kipc__fail(r, KIPC_EBUSY, "a view or loan of this thread holds the lock");
    case R_ERR: return kipc__fail(r, KIPC_ENOMEM, "cannot allocate the message");
    default: return kipc__fail(r, KIPC_EOS, "unexpected ring state %d", rc);
    }
}

/* timeout_s -> an absolute CLOCK_MONOTONIC deadline (THEORY: time); -1 for NaN. */
static int kipc__deadline(double timeout_s, double *deadline)
{
    if (isnan(timeout_s))
        return -1;
    *deadline = timeout_s < 0 || isinf(timeout_s) ? INFINITY : mono() + timeout_s;
    return 0;
}

/* A call on an open handle: the ring's closed word first (THEORY: trust nothing). */
static int kipc__enter(kipc_ring *r)
{
    r->detail[0] = 0;
    if (!r->c.hdr || closing(&r->c))
        return kipc__fail(r, KIPC_ECLOSED, "closed by this process");
    uint32_t closed = atomic_load_explicit(&r->c.hdr->closed, memory_order_relaxed);
    if (closed == CLOSED_BROKEN || is_broken(&r->c))
        return kipc__state(r, R_BROKEN, -1);
    if (closed > CLOSED_BROKEN)
        return kipc__state(r, corrupt(&r->c, "closed word %u (0, 1 or 2 expected)", closed), -1);
    return KIPC_OK;
}

/* -- names, owner records (kipc._owners: the same JSON file Python writes) -------------------- */

static int kipc__valid_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 200 || n[0] == '.' || n[0] == '-' || strstr(n, ".."))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '@' || ch == '+' || ch == '-'))
            return 0;
    }
    return 1;
}

/* SHA-256 (FIPS 180-4): the owner record's file name is sha256(url)[:24] (kipc._owners._path). */
static void kipc__sha256(const unsigned char *msg, size_t len, unsigned char out[32])
{
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
#define KIPC__ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
    size_t blocks = (len + 9 + 63) / 64;
    for (size_t b = 0; b < blocks; b++) {
        unsigned char blk[64];
        for (int i = 0; i < 64; i++) {
            size_t at = b * 64 + (size_t)i;
            blk[i] = at < len ? msg[at] : at == len ? 0x80 : 0;
        }
        if (b == blocks - 1)
            for (int i = 0; i < 8; i++)
                blk[63 - i] = (unsigned char)(((uint64_t)len * 8) >> (8 * i));
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 | (uint32_t)blk[4 * i + 2] << 8 | blk[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = KIPC__ROR(w[i - 15], 7) ^ KIPC__ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = KIPC__ROR(w[i - 2], 17) ^ KIPC__ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = hh + (KIPC__ROR(e, 6) ^ KIPC__ROR(e, 11) ^ KIPC__ROR(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            uint32_t t2 = (KIPC__ROR(a, 2) ^ KIPC__ROR(a, 13) ^ KIPC__ROR(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = bb; bb = a; a = t1 + t2;
        }
        h[0] += a; h[1] += bb; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
#undef KIPC__ROR
    for (int i = 0; i < 32; i++)
        out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* kipc._naming.private_dir: create 0700 if missing, then it must be our own 0700 directory. */
static int kipc__private_dir(const char *path)
{
    if (mkdir(path, 0700) == 0)
        chmod(path, 0700); /* the umask filtered mkdir's mode */
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return -1;
    return 0;
}

/* runtime_dir("objects")/sha256(url)[:24].json (kipc._naming.runtime_dir, kipc._owners._path). */
static int kipc__record_path(const char *url, char *out, size_t size)
{
    char base[4096];
    const char *over = getenv("KIPC_RUNTIME_DIR"), *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (over && *over)
        snprintf(base, sizeof base, "%s", over);
    else if (xdg && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(base, sizeof base, "%s/kipc", xdg);
    else
        snprintf(base, sizeof base, "/tmp/kipc-%u", (unsigned)geteuid());
    if (kipc__private_dir(base) != 0)
        return -1;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/objects", base);
    if (kipc__private_dir(dir) != 0)
        return -1;
    unsigned char dg[32];
    kipc__sha256((const unsigned char *)url, strlen(url), dg);
    char hex[25];
    for (int i = 0; i < 12; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    return snprintf(out, size, "%s/%s.json", dir, hex) >= (int)size ? -1 : 0;
}

/* The identity kipc._objects.file_identity records: dev, ino and (statx) birth time. */
static void kipc__identity(int fd, char *out, size_t size)
{
    struct stat st;
    fstat(fd, &st);
    int n = snprintf(out, size, "{\"dev\": %llu, \"ino\": %llu", (unsigned long long)st.st_dev,
                     (unsigned long long)st.st_ino);
#ifdef STATX_BTIME
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BTIME, &sx) == 0 && (sx.stx_mask & STATX_BTIME)) {
        unsigned long long b = (unsigned long long)sx.stx_btime.tv_sec * 1000000000ull + sx.stx_btime.tv_nsec;
        if (b)
            n += snprintf(out + n, size - (size_t)n, ", \"btime\": %llu", b);
    }
#endif
    snprintf(out + n, size - (size_t)n, "}");
}

/* Record this process as the ring's creator (kipc._owners.record: atomic write, 0600). */
static int kipc__record(kipc_ring *r, int fd)
{
    char url[220], path[4300], tmp[4400], ident[160];
    snprintf(url, sizeof url, "ring://%s", r->name);
    if (kipc__record_path(url, path, sizeof path) != 0)
        return -1;
    kipc__identity(fd, ident, sizeof ident);
    char state;
    uint64_t start = 0;
    char start_s[32] = "null";
    if (read_stat(r->c.pid, &state, &start) == 0)
        snprintf(start_s, sizeof start_s, "%llu", (unsigned long long)start);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char json[1024];
    int n = snprintf(json, sizeof json,
                     "{\"url\": \"%s\", \"kind\": \"ring\", \"pid\": %u, \"start_time\": %s, \"created\": %.6f, "
                     "\"extra\": {\"path\": \"%s\", \"capacity\": %llu, \"identity\": %s}}",
                     url, r->c.pid, start_s, (double)tv.tv_sec + tv.tv_usec * 1e-6, r->path,
                     (unsigned long long)r->c.cap, ident);
    snprintf(tmp, sizeof tmp, "%s.%u.tmp", path, r->c.pid);
    int t = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (t < 0)
        return -1;
    int ok = write(t, json, (size_t)n) == n;
    close(t);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void kipc__forget(kipc_ring *r)
{
    char url[220], path[4300];
    snprintf(url, sizeof url, "ring://%s", r->name);
    if (kipc__record_path(url, path, sizeof path) == 0)
        unlink(path);
}

/* -- open / close ---------------------------------------------------------------------------- */

static uint32_t kipc__serial;

/* Attach checks of kipc.transports.ring._check_attach: type, owner uid, mode bits, then the
 * magic (a creator between O_EXCL and publishing its header gets KIPC__ATTACH_WAIT s). */
static int kipc__check_attach(kipc_ring *r, int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return kipc__fail(r, KIPC_EOS, "fstat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        return kipc__fail(r, KIPC_EBADOBJECT, "open ring://%s: not a regular shared-memory object", r->name);
    if (st.st_uid != geteuid())
        return kipc__fail(r, KIPC_EPERM, "open ring://%s: owned by uid %u, not us (%u); a ring is attached only by "
                          "its owner's uid", r->name, (unsigned)st.st_uid, (unsigned)geteuid());
    if (st.st_mode & 077)
        return kipc__fail(r, KIPC_EPERM, "open ring://%s: mode %#o grants more than 0600 to group/other; a ring is "
                          "attached only with mode 0600", r->name, (unsigned)(st.st_mode & 0777));
    double end = mono() + KIPC__ATTACH_WAIT;
    for (;;) {
        uint64_t magic = 0;
        if (fstat(fd, &st) != 0)
            return kipc__fail(r, KIPC_EOS, "fstat: %s", strerror(errno));
        if (st.st_size >= 8 && pread(fd, &magic, 8, 0) != 8)
            magic = 0;
        if (st.st_size >= 2 * KIPC__PAGE && magic == RING_MAGIC)
            return KIPC_OK;
        int initialising = st.st_size < 2 * KIPC__PAGE || magic == 0;
        if (!initialising || mono() >= end)
            return kipc__fail(r, KIPC_EBADOBJECT, "open ring://%s: %lld bytes without a kipc ring header (truncated, "
                              "foreign, or its creator died while initialising)", r->name, (long long)st.st_size);
        usleep(5000);
    }
}

static int kipc__map(kipc_ring *r, int fd, int create, uint64_t cap)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return kipc__fail(r, KIPC_EOS, "fstat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)(2 * HDR_SIZE) || st.st_size % HDR_SIZE)
        return kipc__fail(r, KIPC_EBADOBJECT, "ring://%s: object of %lld bytes is not a kipc ring", r->name,
                          (long long)st.st_size);
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return kipc__fail(r, kipc__errno(errno), "mmap: %s", strerror(errno));
    const char *why = rc_header_init(base, (size_t)st.st_size, create, cap, r->c.pid, r->c.start, 0);
    if (why) {
        munmap(base, (size_t)st.st_size);
        return kipc__fail(r, create ? KIPC_EOS : KIPC_EBADOBJECT, "ring://%s: %s (not a kipc ring v%u, or corrupted)",
                          r->name, why, RING_VERSION);
    }
    rc_bind(&r->c, base, (size_t)st.st_size);
    return KIPC_OK;
}

int kipc_ring_open(const char *name, const kipc_ring_options *opt, kipc_ring **out)
{
    static const kipc_ring_options defaults = {KIPC_RING_ATTACH, 0, -1.0, 0};
    if (!opt)
        opt = &defaults;
    kipc__open_detail[0] = 0;
    if (!name || !out || !kipc__valid_name(name)) {
        snprintf(kipc__open_detail, sizeof kipc__open_detail, "ring name %.40s%s: use 1 to 200 of A-Za-z0-9_.@+- "
                 "(not starting with '-' or '.', no '..')", name ? name : "(null)", name && strlen(name) > 40 ? "..." : "");
        return KIPC_EINVAL;
    }
    uint64_t cap = opt->capacity ? opt->capacity : (1u << 20);
    if (opt->create < 0 || opt->create > 2 || isnan(opt->spin_us) || opt->spin_us > 1e6 || cap > (1ull << 40)) {
        snprintf(kipc__open_detail, sizeof kipc__open_detail, "options: create %d (0, 1 or 2), spin_us %g (<= 1e6), "
                 "capacity %llu (<= 2^40)", opt->create, opt->spin_us, (unsigned long long)cap);
        return KIPC_EINVAL;
    }
    if (cap < KIPC__PAGE)
        cap = KIPC__PAGE;
    while (cap & (cap - 1)) /* a power of two (THEORY: counters and wrap) */
        cap = (cap | (cap - 1)) + 1;
    kipc_ring *r = calloc(1, sizeof *r);
    if (!r)
        return KIPC_ENOMEM;
    rc_process_init();
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->path, sizeof r->path, "/dev/shm/kipc.ring.%s", name);
    r->c.slot = -1;
    r->c.spin = (opt->spin_us < 0 ? 50.0 : opt->spin_us) * 1e-6;
    r->c.pid = (uint32_t)getpid();
    char state;
    if (read_stat(r->c.pid, &state, &r->c.start) != 0)
        r->c.start = 0;
    r->c.token = ((uint64_t)r->c.pid << 32) | (0x80000000u | __atomic_add_fetch(&kipc__serial, 1, __ATOMIC_RELAXED));
    r->persist = opt->persist != 0;
    int fd = -1, rc = KIPC_OK;
    if (opt->create) {
        struct statvfs vs;
        if (statvfs("/dev/shm", &vs) == 0 && cap + KIPC__PAGE > (uint64_t)vs.f_bavail * vs.f_frsize) {
            rc = kipc__fail(r, KIPC_ENOSPC, "create ring://%s: capacity %llu + %u header bytes exceed the free space "
                            "of /dev/shm", name, (unsigned long long)cap, KIPC__PAGE);
            goto fail;
        }
        fd = open(r->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            r->owner = 1;
            fchmod(fd, 0600); /* the umask filtered open()'s mode */
            int e = posix_fallocate(fd, 0, (off_t)(KIPC__PAGE + cap)); /* tmpfs pages now, never SIGBUS later */
            if (e && e != EOPNOTSUPP && e != EINVAL) {
                rc = kipc__fail(r, kipc__errno(e), "create ring://%s: cannot reserve %llu bytes in /dev/shm: %s", name,
                                (unsigned long long)(KIPC__PAGE + cap), strerror(e));
                goto fail;
            }
            if (ftruncate(fd, (off_t)(KIPC__PAGE + cap)) != 0) {
                rc = kipc__fail(r, kipc__errno(errno), "ftruncate: %s", strerror(errno));
                goto fail;
            }
            if ((rc = kipc__map(r, fd, 1, cap)) != KIPC_OK)
                goto fail;
            if (r->persist)
                kipc__forget(r); /* a stale record of a dead creator must not make gc collect this one */
            else if (kipc__record(r, fd) != 0) {
                rc = kipc__fail(r, KIPC_EOS, "create ring://%s: cannot write its owner record: %s", name,
                                strerror(errno));
                goto fail;
            }
            close(fd);
            *out = r;
            return KIPC_OK;
        }
        if (errno != EEXIST || opt->create != KIPC_RING_IF_MISSING) {
            rc = kipc__fail(r, kipc__errno(errno), "create ring://%s: %s", name, strerror(errno));
            goto fail;
        }
    }
    fd = open(r->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        rc = kipc__fail(r, kipc__errno(errno), "open ring://%s: %s", name, strerror(errno));
        goto fail;
    }
    if ((rc = kipc__check_attach(r, fd)) != KIPC_OK || (rc = kipc__map(r, fd, 0, 0)) != KIPC_OK)
        goto fail;
    close(fd);
    *out = r;
    return KIPC_OK;
fail:
    if (r->c.hdr) {
        slot_unregister(r->c.slot);
        munmap(r->c.hdr, r->c.map_size);
    }
    if (fd >= 0)
        close(fd);
    if (r->owner)
        unlink(r->path);
    memcpy(kipc__open_detail, r->detail, sizeof kipc__open_detail);
    free(r);
    return rc;
}

int kipc_ring_close(kipc_ring *r)
{
    if (!r)
        return KIPC_OK;
    if (r->view == 1)
        unlock_ring(&r->c, 0); /* not consumed: it stays for the next consumer */
    if (r->loan)
        unlock_ring(&r->c, 1); /* nothing published */
    struct ring_hdr *h = r->c.hdr;
    if (r->owner && !r->persist && !is_broken(&r->c)) { /* the creator ends the channel for everyone (a
                                                          * truncated ring's peers were told: closed = 2) */
        atomic_store(&h->closed, 1);
        wake_all(h);
    }
    atomic_store(&r->c.closing, 1);
    rc_forget(&r->c);
    free(r->held);
    slot_unregister(r->c.slot);
    munmap(h, r->c.map_size);
    if (r->owner && !r->persist) {
        unlink(r->path);
        kipc__forget(r);
    }
    free(r);
    return KIPC_OK;
}

/* -- messages -------------------------------------------------------------------------------- */

int kipc_ring_send(kipc_ring *r, const void *data, size_t len, double timeout_s)
{
    double deadline;
    if (!r || (!data && len) || isnan(timeout_s))
        return KIPC_EINVAL;
    int rc = kipc__enter(r);
    if (rc != KIPC_OK)
        return rc;
    if (r->loan)
        return kipc__fail(r, KIPC_EBUSY, "send with a loan open on this handle");
    if ((uint64_t)len > TOTAL_LIMIT) /* consumers refuse a bigger total as corrupt */
        return kipc__fail(r, KIPC_ETOOBIG, "a %zu-byte message: the limit of a ring message is %llu bytes", len,
                          (unsigned long long)TOTAL_LIMIT);
    rc_part part = {data, (uint64_t)len};
    if (timeout_s != 0 && (uint64_t)len <= r->c.frag_max) {
        /* one record: a non-blocking attempt first, so a call that does not wait never reads
         * the clock (clock_gettime is a third of a 64 B send on a VM); the deadline is taken
         * only when it has to wait (isnan above validated timeout_s) */
        rc = rc_produce(&r->c, &part, 1, (uint64_t)len, 0.0, 0, 1, NULL);
        if (rc != R_EMPTY)
            return kipc__state(r, rc, timeout_s);
    }
    kipc__deadline(timeout_s, &deadline);
    return kipc__state(r, rc_produce(&r->c, &part, 1, (uint64_t)len, deadline, 0, 0, NULL), timeout_s);
}

/* The next message: in place (R_WHOLE, cons_lock held) or reassembled/held (r->held). */
static int kipc__take(kipc_ring *r, double timeout_s, rc_msg *m)
{
    double deadline;
    if (isnan(timeout_s))
        return KIPC_EINVAL;
    int rc = kipc__enter(r);
    if (rc != KIPC_OK)
        return rc;
    if (r->view)
        return kipc__fail(r, KIPC_EBUSY, "recv with a view open on this handle");
    if (r->held) { /* handed out before anything newer: FIFO */
        m->src = r->held;
        m->len = r->held_len;
        return OK;
    }
    rc = R_EMPTY;
    if (timeout_s != 0) /* a non-blocking attempt first: the clock only if it has to wait (send) */
        rc = rc_consume(&r->c, 0.0, 1, NULL, 0, m);
    if (rc == R_EMPTY) {
        kipc__deadline(timeout_s, &deadline);
        rc = rc_consume(&r->c, deadline, 0, NULL, 0, m);
    }
    if (rc == OK) { /* reassembled (malloc, rc_hooks defaults): this handle keeps it until handed out */
        r->held = m->msg;
        r->held_len = m->len;
        return OK;
    }
    return rc == R_WHOLE ? R_WHOLE : kipc__state(r, rc, timeout_s);
}

int kipc_ring_recv(kipc_ring *r, void *buf, size_t cap, size_t *len, double timeout_s)
{
    if (!r || !len || (!buf && cap))
        return KIPC_EINVAL;
    rc_msg m;
    int rc = kipc__take(r, timeout_s, &m);
    if (rc < 0)
        return rc;
    *len = (size_t)m.len;
    if (m.len > cap) {
        if (rc == R_WHOLE)
            unlock_ring(&r->c, 0); /* it stays at head */
        return kipc__fail(r, KIPC_ETOOBIG, "a %llu-byte message does not fit the %zu-byte buffer",
                          (unsigned long long)m.len, cap);
    }
    memcpy(buf, m.src, (size_t)m.len);
    if (rc == R_WHOLE)
        return kipc__state(r, rc_take_whole(&r->c, m.next), timeout_s);
    free(r->held);
    r->held = NULL;
    return KIPC_OK;
}

int kipc_ring_recv_view(kipc_ring *r, const void **data, size_t *len, double timeout_s)
{
    if (!r || !data || !len)
        return KIPC_EINVAL;
    rc_msg m;
    int rc = kipc__take(r, timeout_s, &m);
    if (rc < 0)
        return rc;
    *data = m.src;
    *len = (size_t)m.len;
    r->view = rc == R_WHOLE ? 1 : 2;
    r->view_next = m.next;
    return KIPC_OK;
}

int kipc_ring_release(kipc_ring *r)
{
    if (!r || !r->view)
        return KIPC_EINVAL;
    int v = r->view;
    r->view = 0;
    if (v == 2) {
        free(r->held);
        r->held = NULL;
        return KIPC_OK;
    }
    r->detail[0] = 0;
    return kipc__state(r, rc_take_whole(&r->c, r->view_next), -1);
}

int kipc_ring_loan(kipc_ring *r, size_t n, void **buf, double timeout_s)
{
    double deadline;
    if (!r || !buf || kipc__deadline(timeout_s, &deadline) < 0)
        return KIPC_EINVAL;
    int rc = kipc__enter(r);
    if (rc != KIPC_OK)
        return rc;
    if (r->loan)
        return kipc__fail(r, KIPC_EBUSY, "a loan is already open on this handle");
    if ((uint64_t)n > r->c.frag_max)
        return kipc__fail(r, KIPC_EINVAL, "loan of %zu bytes: the limit for this ring is %llu bytes", n,
                          (unsigned long long)r->c.frag_max);
    uint64_t pad = 0;
    if ((rc = rc_reserve(&r->c, rec_size((uint64_t)n), 0, deadline, 0, &pad)) != OK)
        return kipc__state(r, rc, timeout_s);
    r->loan = 1;
    r->loan_ptr = place(&r->c, pad, (uint64_t)n, F_FIRST | F_LAST, (uint64_t)n);
    r->loan_size = n;
    r->loan_pad = pad;
    r->loan_tail = r->c.vtail; /* validated under prod_lock: commit publishes from it */
    *buf = r->loan_ptr;
    return KIPC_OK;
}

int kipc_ring_commit(kipc_ring *r, size_t n)
{
    if (!r || !r->loan || (uint64_t)n > r->loan_size)
        return KIPC_EINVAL;
    r->loan = 0;
    struct ring_hdr *h = r->c.hdr;
    struct rec *rec = (struct rec *)(r->loan_ptr - REC_HDR);
    rec->len = (uint32_t)n;
    rec->total = (uint64_t)n;
    if (is_broken(&r->c)) {
        unlock_ring(&r->c, 1);
        return kipc__state(r, R_BROKEN, -1);
    }
    publish(h, r->loan_tail + r->loan_pad + rec_size((uint64_t)n),
            atomic_load_explicit(&h->msgs_in, memory_order_relaxed) + 1);
    unlock_ring(&r->c, 1);
    return KIPC_OK;
}

int kipc_ring_abort(kipc_ring *r)
{
    if (!r || !r->loan)
        return KIPC_EINVAL;
    r->loan = 0;
    unlock_ring(&r->c, 1);
    return KIPC_OK;
}

#undef KIPC__PAGE
#undef KIPC__ATTACH_WAIT
#undef advance
#undef check_cons
#undef check_prod
#undef claim_clear
#undef claim_set
#undef claimant_alive
#undef closing
#undef corrupt
#undef cpu_relax
#undef foreign_claim
#undef frag_abort
#undef futex_wake_all
#undef is_broken
#undef lock_ring
#undef lock_word_bad
#undef mono
#undef mono_ns
#undef pclaim_end
#undef pclaim_live
#undef place
#undef probe_producer
#undef proc_alive
#undef publish
#undef read_stat
#undef repair_cons
#undef repair_prod
#undef room
#undef slot_register
#undef slot_unregister
#undef unlock_ring
#undef wait_word
#undef wake_all
#undef lo32
#undef rec_size
#undef rec_prefetch
#undef mutex_kind
#undef slot_broken
#undef slot_base
#undef slot_size
#undef prev_bus
#undef on_sigbus
#undef install_sigbus
#undef held
#undef nheld
#undef held_add
#undef held_has
#undef held_drop
#undef gather
#undef gather_big
#undef produce_frag_nb
#undef take_locked
#undef ring_hdr
#undef rec
#undef OK
#undef R_TIMEOUT
#undef R_CLOSED
#undef R_BROKEN
#undef R_LOCAL
#undef R_EMPTY
#undef R_CORRUPT
#undef R_MISMATCH
#undef R_HELD
#undef R_ERR
#undef RING_MAGIC
#undef RING_VERSION
#undef HDR_SIZE
#undef REC_HDR
#undef F_FIRST
#undef F_LAST
#undef F_PAD
#undef BIG_COPY
#undef VIEW_MIN
#undef SLICE
#undef PROBE
#undef PCLAIM_STALE_NS
#undef CL
#undef PID_LIMIT
#undef TOTAL_LIMIT
#undef CLOSED_BROKEN
#undef R_WHOLE
#undef RING_SLOTS
#undef HELD_MAX
#endif /* KIPC_RING_DECLARE_ONLY */
#endif /* KIPC_RING_H */
