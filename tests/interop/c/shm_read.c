/* seed-style: shmget(key, SIZE, 0) + shmat + printf */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#define SIZE 1024

int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int shmid = shmget(key, SIZE, 0);
    if (shmid < 0) { perror("shmget"); return 1; }
    void *shmaddr = shmat(shmid, (void *)0, 0);
    if (shmaddr == (void *)-1) { perror("shmat"); return 1; }
    printf("%s\n", (char *)shmaddr);
    shmdt(shmaddr);
    return 0;
}
