/* The C API (kipc_ring.h) in one process under ASan+UBSan with leak detection: a producer thread
 * and a consumer thread, each on its own handle, whole and fragmented messages by copy, view
 * and loan; ETOOBIG keeps the message; close removes the ring. argv[1]: the ring name. */
#include "../../src/kipc/_native/include/kipc_ring.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 2000
static const char *name;
static int fails;
#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            fails++;                                                          \
        }                                                                     \
    } while (0)

static size_t size_of(int i) { return (size_t[]){1, 64, 2000, 2032, 2033, 9000, 40000}[i % 7]; }

static void fill(unsigned char *p, int i, size_t len)
{
    for (size_t k = 0; k < len; k++)
        p[k] = (unsigned char)(i * 13 + k);
}

static int good(const unsigned char *p, int i, size_t len)
{
    if (len != size_of(i))
        return 0;
    for (size_t k = 0; k < len; k++)
        if (p[k] != (unsigned char)(i * 13 + k))
            return 0;
    return 1;
}

static void *producer(void *arg)
{
    kipc_ring *r;
    CHECK(kipc_ring_open(name, NULL, &r) == KIPC_OK);
    unsigned char *buf = malloc(40000);
    for (int i = 0; i < N; i++) {
        size_t len = size_of(i);
        if (i % 3 == 0 && len <= kipc_ring_max_loan(r)) {
            void *p;
            CHECK(kipc_ring_loan(r, len, &p, 10.0) == KIPC_OK);
            fill(p, i, len);
            CHECK(kipc_ring_commit(r, len) == KIPC_OK);
        } else {
            fill(buf, i, len);
            CHECK(kipc_ring_send(r, buf, len, 10.0) == KIPC_OK);
        }
    }
    free(buf);
    kipc_ring_close(r);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 64;
    name = argv[1];
    kipc_ring_options o = {KIPC_RING_CREATE, 4096, -1, 0};
    kipc_ring *owner, *rx, *dup;
    CHECK(kipc_ring_open(name, &o, &owner) == KIPC_OK);
    CHECK(kipc_ring_open(name, &o, &dup) == KIPC_EEXIST);
    o.create = KIPC_RING_IF_MISSING;
    CHECK(kipc_ring_open(name, &o, &rx) == KIPC_OK);
    CHECK(kipc_ring_capacity(rx) == 4096 && kipc_ring_max_loan(rx) == 2032);
    pthread_t t;
    pthread_create(&t, NULL, producer, NULL);
    unsigned char *buf = malloc(40000), small[8];
    size_t len;
    for (int i = 0; i < N; i++) {
        if (i % 5 == 1) { /* too small first: the message stays */
            int rc = kipc_ring_recv(rx, small, 1, &len, 10.0);
            CHECK(size_of(i) <= 1 ? rc == KIPC_OK : (rc == KIPC_ETOOBIG && len == size_of(i)));
            if (rc == KIPC_OK) {
                CHECK(len == 1 && small[0] == (unsigned char)(i * 13));
                continue;
            }
        }
        if (i % 2) {
            const void *v;
            CHECK(kipc_ring_recv_view(rx, &v, &len, 10.0) == KIPC_OK);
            CHECK(good(v, i, len));
            CHECK(kipc_ring_recv(rx, buf, 40000, &len, 0) == KIPC_EBUSY);
            CHECK(kipc_ring_release(rx) == KIPC_OK);
        } else {
            CHECK(kipc_ring_recv(rx, buf, 40000, &len, 10.0) == KIPC_OK);
            CHECK(good(buf, i, len));
        }
    }
    pthread_join(t, NULL);
    CHECK(kipc_ring_recv(rx, buf, 40000, &len, 0) == KIPC_EWOULDBLOCK);
    CHECK(kipc_ring_qsize(rx) == 0);
    CHECK(kipc_ring_send(rx, buf, 1, 0.0 / 0.0) == KIPC_EINVAL);
    void *p;
    CHECK(kipc_ring_loan(rx, 2033, &p, 0) == KIPC_EINVAL);
    kipc_ring_close(owner); /* the creator: closed for everyone */
    CHECK(kipc_ring_recv(rx, buf, 40000, &len, 1.0) == KIPC_ECLOSED);
    CHECK(kipc_ring_send(rx, buf, 10, 1.0) == KIPC_ECLOSED);
    kipc_ring_close(rx);
    CHECK(kipc_ring_open(name, NULL, &dup) == KIPC_ENOENT);
    CHECK(strstr(kipc_ring_detail(NULL), "No such file") != NULL);
    CHECK(kipc_ring_open("../x", NULL, &dup) == KIPC_EINVAL && strstr(kipc_ring_detail(NULL), "ring name ../x"));
    /* persist: the creator's close keeps the object (and records no owner); attaching works after */
    kipc_ring_options keep = {KIPC_RING_CREATE, 4096, 0, 1};
    CHECK(kipc_ring_open(name, &keep, &owner) == KIPC_OK);
    CHECK(kipc_ring_send(owner, "kept", 4, 1.0) == KIPC_OK);
    kipc_ring_close(owner);
    CHECK(kipc_ring_open(name, NULL, &rx) == KIPC_OK);
    CHECK(kipc_ring_recv(rx, buf, 40000, &len, 1.0) == KIPC_OK && len == 4 && !memcmp(buf, "kept", 4));
    kipc_ring_close(rx);
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/kipc.ring.%s", name);
    CHECK(unlink(path) == 0);
    free(buf);
    if (fails)
        return 1;
    printf("capi: all checks passed\n");
    return 0;
}
