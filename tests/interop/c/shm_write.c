/* seed-style: shmget((key_t)KEY, SIZE, IPC_CREAT|0666) + shmat + strcpy; waits for a line, then removes */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#define SIZE 1024

int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int shmid = shmget(key, SIZE, IPC_CREAT | 0666);
    if (shmid < 0) { perror("shmget"); return 1; }
    void *shmaddr = shmat(shmid, (void *)0, 0);
    if (shmaddr == (void *)-1) { perror("shmat"); return 1; }
    strcpy((char *)shmaddr, "Linux Programming");
    printf("READY\n"); fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    shmdt(shmaddr);
    shmctl(shmid, IPC_RMID, NULL);
    return 0;
}
