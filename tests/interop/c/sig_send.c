/* sigqueue(pid, SIGRTMIN, value) for each value in argv[2..] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    pid_t pid = (pid_t)atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        union sigval sv;
        sv.sival_int = atoi(argv[i]);
        if (sigqueue(pid, SIGRTMIN, sv) < 0) { perror("sigqueue"); return 1; }
    }
    return 0;
}
