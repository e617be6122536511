/* A minimal producer and consumer of single-record messages built from ring_core's primitives
 * (the same steps as ring_core.c's rc_produce()/rc_consume(), reduced to single records), shared by
 * the C unit tests and the fuzz harness. A ring lives in an anonymous shared mapping. */
#ifndef RING_HARNESS_H
#define RING_HARNESS_H

#define _GNU_SOURCE
#include "../../src/kipc/_native/ring/ring_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static rc_ring *h_new(uint64_t capacity, uint64_t start)
{
    rc_process_init();
    size_t size = HDR_SIZE + capacity;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    if (rc_header_init(base, size, 1, capacity, (uint32_t)getpid(), 0, start) != NULL) {
        munmap(base, size);
        return NULL;
    }
    rc_ring *r = calloc(1, sizeof *r);
    rc_bind(r, base, size);
    r->pid = (uint32_t)getpid();
    r->token = ((uint64_t)r->pid << 32) | 1;
    return r;
}

static void h_free(rc_ring *r)
{
    slot_unregister(r->slot);
    munmap(r->hdr, r->map_size);
    free(r);
}

/* One message of len <= frag_max bytes. OK, R_EMPTY (no room now), or an error state. */
static int h_send(rc_ring *r, const void *buf, uint64_t len, double deadline)
{
    struct ring_hdr *h = r->hdr;
    if (len > r->frag_max)
        return R_ERR;
    int rc = lock_ring(r, 1, deadline, 0);
    if (rc != OK)
        return rc;
    uint64_t pad;
    int fits = prod_room(r, rec_size(len), 0, &pad, NULL); /* validated; cached head, else the live one */
    if (fits <= 0) {
        unlock_ring(r, 1);
        return fits < 0 ? -fits : R_EMPTY;
    }
    unsigned char *dst = place(r, pad, len, F_FIRST | F_LAST, len);
    memcpy(dst, buf, len);
    publish(h, r->vtail + pad + rec_size(len), atomic_load(&h->msgs_in) + 1);
    unlock_ring(r, 1);
    return OK;
}

/* Take one whole message into buf (cap bytes), skipping pads and orphaned fragments. */
static int h_recv(rc_ring *r, void *buf, uint64_t cap, uint64_t *len, double deadline)
{
    struct ring_hdr *h = r->hdr;
    int rc = lock_ring(r, 0, deadline, 0);
    if (rc != OK)
        return rc;
    for (unsigned iter = 0;; iter++) {
        uint64_t head, tail;
        if ((rc = check_cons(r, &head, &tail)) != OK)
            break;
        if (head == tail) {
            rc = R_EMPTY;
            break;
        }
        uint64_t off = head % r->cap;
        struct rec *rec = (struct rec *)(r->data + off);
        uint32_t rlen = rec->len, flags = rec->flags;
        uint64_t total = rec->total;
        const char *bad = rc_check_record(r, off, rlen, flags, total, tail - head, 0, 0, 0);
        if (bad) {
            rc = corrupt(r, "record at offset %llu: %s", (unsigned long long)off, bad);
            break;
        }
        uint64_t next = head + rec_size(rlen);
        if ((flags & (F_FIRST | F_LAST)) != (F_FIRST | F_LAST)) {
            advance(h, next, (flags & F_LAST) != 0); /* pads and fragments: not this harness's */
            if (iter > r->cap / REC_HDR) { /* bounded by the checks: never reached */
                rc = R_ERR;
                break;
            }
            continue;
        }
        if (rlen > cap) {
            rc = R_ERR;
            break;
        }
        memcpy(buf, r->data + off + REC_HDR, rlen);
        *len = rlen;
        advance(h, next, 1);
        rc = OK;
        break;
    }
    unlock_ring(r, 0);
    return rc;
}

#endif
