/* block SIGRTMIN, sigwaitinfo N times, print value/code/pid of each */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("READY %d\n", getpid()); fflush(stdout);
    for (int i = 0; i < n; i++) {
        siginfo_t si;
        if (sigwaitinfo(&set, &si) < 0) { perror("sigwaitinfo"); return 1; }
        printf("%d %d %d %d\n", si.si_signo, si.si_value.sival_int, si.si_code, si.si_pid);
        fflush(stdout);
    }
    return 0;
}
