/* SysV semaphore (semop with SEM_UNDO) guarding a counter in a SysV segment: N increments.
   argv: semkey shmkey N */
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>

int main(int argc, char **argv) {
    key_t semkey = (key_t)strtol(argv[1], NULL, 0), shmkey = (key_t)strtol(argv[2], NULL, 0);
    long n = strtol(argv[3], NULL, 0);
    int semid = semget(semkey, 1, 0), shmid = shmget(shmkey, 0, 0);
    if (semid < 0 || shmid < 0) { perror("get"); return 1; }
    volatile long *counter = shmat(shmid, NULL, 0);
    if (counter == (void *)-1) { perror("shmat"); return 1; }
    struct sembuf p = {0, -1, SEM_UNDO}, v = {0, 1, SEM_UNDO};
    printf("READY\n"); fflush(stdout);
    for (long i = 0; i < n; i++) {
        if (semop(semid, &p, 1) < 0) { perror("semop P"); return 1; }
        long c = *counter;
        sched_yield();            /* widen the race window: without the lock, updates get lost */
        *counter = c + 1;
        if (semop(semid, &v, 1) < 0) { perror("semop V"); return 1; }
    }
    printf("DONE\n");
    return 0;
}
