/* seed-style: msgget(key) + msgsnd of types 1, 2, 3 (argv: key) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>

struct msgbuf_t { long mtype; char mtext[64]; };

int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int msqid = msgget(key, 0);
    if (msqid < 0) { perror("msgget"); return 1; }
    for (long t = 1; t <= 3; t++) {
        struct msgbuf_t sbuf;
        sbuf.mtype = t;
        int n = snprintf(sbuf.mtext, sizeof sbuf.mtext, "hello type %ld", t);
        if (msgsnd(msqid, &sbuf, n, IPC_NOWAIT) < 0) { perror("msgsnd"); return 1; }
    }
    return 0;
}
