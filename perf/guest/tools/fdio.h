/* fdio.h: whole writes, exact reads and line reads on a blocking fd, retried on EINTR.
 * Shared by the guest's vsock tool (perf/guest/tools/vsock.c) and the host agent
 * (perf/vsockhost.c), which speak the same line protocol.
 */
#ifndef VOLT_FDIO_H
#define VOLT_FDIO_H

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* Writes all n bytes; -1 on error. */
static inline int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads one line (without the newline) byte by byte, so nothing behind it is consumed.
 * Returns its length, or -1 at end of file or on error. */
static inline int read_line(int fd, char *line, size_t max) {
  size_t n = 0;
  while (n + 1 < max) {
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    if (c == '\n') break;
    line[n++] = c;
  }
  line[n] = 0;
  return (int)n;
}

/* Reads exactly n bytes; -1 at end of file or on error. */
static inline int read_exact(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

#endif
