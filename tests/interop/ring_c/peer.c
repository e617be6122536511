/* A C peer of ring:// for tests/interop/test_ring_c_api.py, built at test time with
 *     gcc peer.c -I"$(python -m kipc --include)" -lpthread
 * Messages carry {u32 id, u32 seq, u32 len, u32 check} then bytes (id*7 + seq + i) & 0xff, so
 * either side can tell a torn, reordered or foreign message (msg_ok; Python: _payload/_check).
 *
 *   peer produce NAME CREATE N SIZES ID [CAP]  send N messages, sizes cycling through SIZES (a,b,c)
 *   peer loan NAME N SIZE ID                   the same through loan/commit (SIZE <= max loan)
 *   peer consume NAME CREATE N copy|view [CAP] receive N messages, verify, print "ok N" and each id:seq
 *   peer timeouts NAME                         attach an empty ring of 4096: recv/send timeouts
 *   peer open NAME                             attach and report: "rc ERROR"
 *   peer hold NAME                             take a view of one message and keep it (until killed)
 *   peer recv1 NAME                            one recv (2 s): "rc ERROR | detail"
 * CREATE: attach | create. After opening it prints "ready"; a creator then waits for a line on
 * stdin before closing. Output is line-buffered on purpose (a pipe would keep it). */
#include "kipc_ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct mhdr {
    uint32_t id, seq, len, check;
};

static void fill(unsigned char *p, uint32_t id, uint32_t seq, uint32_t len)
{
    struct mhdr h = {id, seq, len, id ^ seq ^ len ^ 0x5a5a5a5au};
    memcpy(p, &h, sizeof h);
    for (uint32_t i = sizeof h; i < len; i++)
        p[i] = (unsigned char)(id * 7 + seq + i);
}

static int msg_ok(const unsigned char *p, size_t len, struct mhdr *out)
{
    if (len < sizeof *out)
        return 0;
    memcpy(out, p, sizeof *out);
    if (out->len != len || out->check != (out->id ^ out->seq ^ out->len ^ 0x5a5a5a5au))
        return 0;
    for (uint32_t i = sizeof *out; i < len; i++)
        if (p[i] != (unsigned char)(out->id * 7 + out->seq + i))
            return 0;
    return 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static kipc_ring *open_or_die(const char *name, const char *create, uint64_t cap)
{
    kipc_ring_options o = {strcmp(create, "create") == 0 ? KIPC_RING_CREATE : KIPC_RING_ATTACH, cap, -1, 0};
    kipc_ring *r;
    int rc = kipc_ring_open(name, &o, &r);
    if (rc) {
        printf("open failed %s\n", kipc_ring_strerror(rc));
        exit(2);
    }
    printf("ready\n");
    return r;
}

static void finish(kipc_ring *r, const char *create)
{
    if (strcmp(create, "create") == 0) {
        char line[8];
        if (!fgets(line, sizeof line, stdin))
            line[0] = 0;
    }
    kipc_ring_close(r);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        return 64;
    const char *cmd = argv[1], *name = argv[2];
    if (!strcmp(cmd, "produce") && argc >= 7) {
        uint64_t cap = argc > 7 ? strtoull(argv[7], NULL, 0) : 0;
        kipc_ring *r = open_or_die(name, argv[3], cap);
        long n = atol(argv[4]);
        uint32_t id = (uint32_t)atol(argv[6]), sizes[16];
        int ns = 0;
        for (char *s = strtok(argv[5], ","); s && ns < 16; s = strtok(NULL, ","))
            sizes[ns++] = (uint32_t)atol(s);
        unsigned char *buf = malloc(1 << 20);
        for (long i = 0; i < n; i++) {
            uint32_t len = sizes[i % ns];
            fill(buf, id, (uint32_t)i, len);
            int rc = kipc_ring_send(r, buf, len, 30.0);
            if (rc) {
                printf("send failed %s %s\n", kipc_ring_strerror(rc), kipc_ring_detail(r));
                return 3;
            }
        }
        printf("sent %ld\n", n);
        free(buf);
        finish(r, argv[3]);
        return 0;
    }
    if (!strcmp(cmd, "loan") && argc >= 6) {
        kipc_ring *r = open_or_die(name, "attach", 0);
        long n = atol(argv[3]);
        uint32_t size = (uint32_t)atol(argv[4]), id = (uint32_t)atol(argv[5]);
        for (long i = 0; i < n; i++) {
            void *p;
            int rc = kipc_ring_loan(r, size + 100, &p, 30.0); /* reserve more, commit what is written */
            if (rc) {
                printf("loan failed %s %s\n", kipc_ring_strerror(rc), kipc_ring_detail(r));
                return 3;
            }
            fill(p, id, (uint32_t)i, size);
            if ((rc = kipc_ring_commit(r, size)) != 0) {
                printf("commit failed %s\n", kipc_ring_strerror(rc));
                return 3;
            }
        }
        /* an aborted loan publishes nothing */
        void *p;
        if (kipc_ring_loan(r, 64, &p, 30.0) == 0)
            kipc_ring_abort(r);
        printf("sent %ld\n", n);
        kipc_ring_close(r);
        return 0;
    }
    if (!strcmp(cmd, "consume") && argc >= 6) {
        uint64_t cap = argc > 6 ? strtoull(argv[6], NULL, 0) : 0;
        kipc_ring *r = open_or_die(name, argv[3], cap);
        long n = atol(argv[4]), bad = 0;
        int view = !strcmp(argv[5], "view");
        size_t bufcap = 1 << 20;
        unsigned char *buf = malloc(bufcap);
        for (long i = 0; i < n; i++) {
            const unsigned char *m;
            size_t len;
            int rc;
            if (view) {
                rc = kipc_ring_recv_view(r, (const void **)&m, &len, 30.0);
            } else {
                rc = kipc_ring_recv(r, buf, bufcap, &len, 30.0);
                m = buf;
            }
            if (rc) {
                printf("recv failed %s %s\n", kipc_ring_strerror(rc), kipc_ring_detail(r));
                return 3;
            }
            struct mhdr h;
            if (msg_ok(m, len, &h))
                printf("%u:%u\n", h.id, h.seq);
            else
                bad++;
            if (view)
                kipc_ring_release(r);
        }
        printf("ok %ld bad %ld\n", n, bad);
        free(buf);
        finish(r, argv[3]);
        return 0;
    }
    if (!strcmp(cmd, "timeouts")) {
        kipc_ring *r = open_or_die(name, "attach", 0);
        char buf[64];
        size_t len;
        double t = now();
        int rc = kipc_ring_recv(r, buf, sizeof buf, &len, 0.3);
        printf("recv %s %.3f\n", kipc_ring_strerror(rc), now() - t);
        t = now();
        rc = kipc_ring_recv(r, buf, sizeof buf, &len, 0);
        printf("recv0 %s %.3f\n", kipc_ring_strerror(rc), now() - t);
        unsigned char big[1500];
        memset(big, 1, sizeof big);
        while ((rc = kipc_ring_send(r, big, sizeof big, 0)) == 0)
            ; /* fill the ring */
        printf("fill %s\n", kipc_ring_strerror(rc));
        t = now();
        rc = kipc_ring_send(r, big, sizeof big, 0.3);
        printf("send %s %.3f\n", kipc_ring_strerror(rc), now() - t);
        rc = kipc_ring_recv(r, buf, 10, &len, 1.0);
        printf("small %s %zu\n", kipc_ring_strerror(rc), len);
        rc = kipc_ring_recv(r, big, sizeof big, &len, 1.0); /* the message that did not fit is still first */
        printf("after %s %zu\n", kipc_ring_strerror(rc), len);
        printf("nan %s\n", kipc_ring_strerror(kipc_ring_send(r, big, 1, 0.0 / 0.0)));
        kipc_ring_close(r);
        return 0;
    }
    if (!strcmp(cmd, "hold")) { /* take a view and keep it until killed */
        kipc_ring *r = open_or_die(name, "attach", 0);
        const void *v;
        size_t len;
        int rc = kipc_ring_recv_view(r, &v, &len, 30.0);
        printf("holding %s %zu\n", kipc_ring_strerror(rc), len);
        for (;;)
            pause();
    }
    if (!strcmp(cmd, "recv1")) { /* one recv, report the outcome */
        kipc_ring *r = open_or_die(name, "attach", 0);
        char buf[256];
        size_t len = 0;
        int rc = kipc_ring_recv(r, buf, sizeof buf, &len, 2.0);
        printf("rc %s | %s\n", kipc_ring_strerror(rc), kipc_ring_detail(r));
        kipc_ring_close(r);
        return 0;
    }
    if (!strcmp(cmd, "open")) {
        kipc_ring *r;
        int rc = kipc_ring_open(name, NULL, &r);
        printf("rc %s\n", kipc_ring_strerror(rc));
        fprintf(stderr, "%s\n", kipc_ring_detail(NULL)); /* why, for a failing test's message */
        if (rc == 0)
            kipc_ring_close(r);
        return 0;
    }
    return 64;
}
