/* Maps a regular file MAP_SHARED. usage: mmap_rw PATH write OFFSET TEXT | mmap_rw PATH read OFFSET N */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    fstat(fd, &st);
    char *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    long off = strtol(argv[3], NULL, 0);
    if (strcmp(argv[2], "write") == 0) {
        memcpy(p + off, argv[4], strlen(argv[4]));
    } else {
        long n = strtol(argv[4], NULL, 0);
        fwrite(p + off, 1, (size_t)n, stdout);
        printf("\n");
    }
    munmap(p, (size_t)st.st_size);
    return 0;
}
