/* Takes a kipc.Lock from C: shm_open("/kipc.lock.NAME") + the kipc_sync.h layout.
 * usage: lock_hold NAME hold|die     hold: lock, print READY, unlock after a line on stdin
 *                                    die:  lock, print READY, wait for a line, exit holding it */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../../src/kipc/_native/kipc_sync.h"

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    char name[300];
    snprintf(name, sizeof name, "/kipc.lock.%s", argv[1]);
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) { perror("shm_open"); return 1; }
    struct ksync_hdr *h = mmap(NULL, KSYNC_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) { perror("mmap"); return 1; }
    if (atomic_load(&h->magic) != KSYNC_MAGIC || h->kind != KSYNC_LOCK) { fprintf(stderr, "not a lock\n"); return 1; }
    int rc = pthread_mutex_lock(&h->mutex);
    if (rc == EOWNERDEAD) { pthread_mutex_consistent(&h->mutex); printf("RECOVERED\n"); }
    else if (rc) { fprintf(stderr, "lock: %s\n", strerror(rc)); return 1; }
    atomic_store(&h->holder_pid, (uint32_t)getpid());
    printf("READY\n"); fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    if (strcmp(argv[2], "die") == 0) _exit(0); /* the kernel's robust list marks the mutex */
    atomic_store(&h->holder_pid, 0);
    pthread_mutex_unlock(&h->mutex);
    atomic_fetch_add(&h->release_gen, 1);
    if (atomic_load(&h->gen_waiters)) syscall(SYS_futex, &h->release_gen, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    printf("RELEASED\n"); fflush(stdout);
    return 0;
}
