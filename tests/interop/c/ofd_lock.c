/* A C program using open-file-description record locks (F_OFD_SETLK[W]) on a whole file.
 * usage: ofd_lock PATH try    -> prints GOT (and unlocks) or BUSY
 *        ofd_lock PATH hold   -> blocks until locked, prints READY, unlocks after a line on stdin */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) { perror("open"); return 1; }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (strcmp(argv[2], "try") == 0) {
        if (fcntl(fd, F_OFD_SETLK, &fl) == 0) { printf("GOT\n"); return 0; }
        if (errno == EAGAIN || errno == EACCES) { printf("BUSY\n"); return 0; }
        perror("fcntl"); return 1;
    }
    if (fcntl(fd, F_OFD_SETLKW, &fl) != 0) { perror("fcntl"); return 1; }
    printf("READY\n"); fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    fl.l_type = F_UNLCK;
    fcntl(fd, F_OFD_SETLK, &fl);
    printf("RELEASED\n"); fflush(stdout);
    return 0;
}
