/* POSIX mq: mq_open(name) + mq_send with priorities 1, 7, 3 (argv: /name) */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    mqd_t mq = mq_open(argv[1], O_WRONLY);
    if (mq == (mqd_t)-1) { perror("mq_open"); return 1; }
    const char *msgs[] = {"low", "high", "mid"};
    unsigned prios[] = {1, 7, 3};
    for (int i = 0; i < 3; i++)
        if (mq_send(mq, msgs[i], strlen(msgs[i]), prios[i]) < 0) { perror("mq_send"); return 1; }
    mq_close(mq);
    return 0;
}
