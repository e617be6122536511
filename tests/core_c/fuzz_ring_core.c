/* Fuzz harness of ring_core: the input is a program of operations on one 4 KiB ring — send,
 * receive, and writes of arbitrary bytes into the shared header or the data area between them
 * (a hostile same-uid peer). Every operation must return a known state within its deadline;
 * ASan/UBSan catch the rest. A ring found corrupt (closed = 2) is recreated.
 *
 *   libFuzzer:  clang -fsanitize=fuzzer,address,undefined -DKIPC_LIBFUZZER ...   (make fuzz)
 *   gcc:        a deterministic random-mutation loop in main() (the `make test` smoke)
 */
#include "ring_harness.h"

#include <math.h>

static rc_ring *ring;
static int wedged; /* a garbage lock word naming a live thread: calls time out; start afresh */
static unsigned long long execs, corrupt_found, timeouts, msgs_ok;

static void fail(const char *what, int rc)
{
    fprintf(stderr, "FINDING: %s (rc %d, why: %s)\n", what, rc, ring ? ring->why : "");
    abort();
}

static int known(int rc) { return rc == OK || rc == R_EMPTY || rc == R_TIMEOUT || rc == R_CORRUPT || rc == R_CLOSED; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ring || wedged || atomic_load(&ring->hdr->closed) != 0) {
        wedged = 0;
        if (ring)
            h_free(ring);
        ring = h_new(4096, size && data[0] & 1 ? UINT64_MAX - 2048 : 0);
        if (!ring)
            fail("cannot create a ring", 0);
    }
    unsigned char buf[4096], msg[2048];
    execs++;
    for (size_t i = 0; i + 1 < size && atomic_load(&ring->hdr->closed) == 0;) {
        uint8_t op = data[i++] % 8, arg = data[i++];
        double t0 = mono(), deadline = t0 + 0.002;
        int rc = OK;
        if (op <= 2) { /* send arg * 7 bytes */
            uint64_t n = (uint64_t)arg * 7 % (ring->frag_max + 1);
            memset(msg, arg, n);
            rc = h_send(ring, msg, n, deadline);
        } else if (op <= 4) {
            uint64_t len = 0;
            rc = h_recv(ring, buf, sizeof buf, &len, deadline);
            if (rc == OK) {
                msgs_ok++;
                if (len > ring->frag_max)
                    fail("a message longer than frag_max was delivered", rc);
            }
        } else if (i + 2 <= size) { /* write `arg % 9` bytes of the input at an offset */
            uint32_t width = arg % 9, where = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8;
            i += 2;
            unsigned char *base = (unsigned char *)ring->hdr;
            /* any byte of the header struct (whatever the layout version), or of the data area */
            size_t at = op == 5 ? where % sizeof(struct ring_hdr) : HDR_SIZE + where % 4096;
            for (uint32_t k = 0; k < width && i < size && at + k < ring->map_size; k++)
                base[at + k] = data[i++];
        }
        if (!known(rc))
            fail("an unknown state", rc);
        if (mono() - t0 > 1.0)
            fail("an operation ran past its deadline", rc);
        corrupt_found += rc == R_CORRUPT;
        timeouts += rc == R_TIMEOUT;
        if (rc == R_TIMEOUT) {
            wedged = 1;
            break;
        }
    }
    return 0;
}

#ifndef KIPC_LIBFUZZER
/* The smoke: `iterations` random programs (xorshift, fixed seed) mutated from each other. */
int main(int argc, char **argv)
{
    unsigned long long n = argc > 1 ? strtoull(argv[1], NULL, 10) : 20000, seed = 0x9E3779B97F4A7C15ull;
    uint8_t in[256];
    size_t len = 0;
    for (unsigned long long it = 0; it < n; it++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if (len == 0 || seed % 8 == 0) { /* fresh program */
            len = 8 + seed % (sizeof in - 8);
            for (size_t k = 0; k < len; k++) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                in[k] = (uint8_t)seed;
            }
        } else { /* mutate a few bytes of the last one */
            for (int k = 0; k < 4; k++)
                in[(seed >> (8 * k)) % len] = (uint8_t)(seed >> (8 * k + 3));
        }
        LLVMFuzzerTestOneInput(in, len);
    }
    printf("fuzz smoke: %llu executions, %llu messages delivered, %llu corrupt rings detected, %llu timeouts, "
           "0 findings\n", execs, msgs_ok, corrupt_found, timeouts);
    return 0;
}
#endif
