/* seed-style: msgget(key) + msgrcv(type 5); prints length and text */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>

#define MSGSZ 128
struct msgbuf_t { long mtype; char mtext[MSGSZ]; };

int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int msqid = msgget(key, 0);
    if (msqid < 0) { perror("msgget"); return 1; }
    struct msgbuf_t rbuf;
    printf("READY\n"); fflush(stdout);
    ssize_t n = msgrcv(msqid, &rbuf, MSGSZ, 5, 0);
    if (n < 0) { perror("msgrcv"); return 1; }
    printf("%ld %zd %.*s\n", rbuf.mtype, n, (int)n, rbuf.mtext);
    return 0;
}
