/* vsockhost: the host agent side of Volt's virtio-vsock test and benchmark, speaking
 * Firecracker's Unix-socket convention (so it drives Firecracker's vsock the same way).
 *
 *   vsockhost PATH GUEST_PORT HOST_PORT BYTES ROUNDS
 *
 * - listens at PATH_HOST_PORT; the guest's `vsock connect 2 HOST_PORT MSG` is answered
 *   "hello-from-host" and reported as `HOST-VSOCK-FROM-GUEST <msg>`;
 * - connects to PATH with `CONNECT GUEST_PORT` (retrying until the guest listens) and, against
 *   the guest's `vsock serve GUEST_PORT`: checks an echo (HOST-VSOCK-ECHO-OK), times ROUNDS
 *   64-byte round trips, BYTES host->guest (SINK) and BYTES guest->host (SOURCE), then QUIT.
 * Every result is one line starting with HOST-VSOCK-. Exits within about 100 s whatever happens.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guest/tools/fdio.h"

static char buf[256 * 1024];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_un unix_addr(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  size_t n = strlen(path);
  if (n >= sizeof(a.sun_path)) n = sizeof(a.sun_path) - 1;
  memcpy(a.sun_path, path, n);
  return a;
}

/* Child: the host service at PATH_HOST_PORT that the guest connects to. */
static void host_service(const char *path, unsigned port) {
  char p[256];
  snprintf(p, sizeof(p), "%s_%u", path, port);
  unlink(p);
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = unix_addr(p);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 4) < 0) {
    printf("HOST-VSOCK-LISTEN-FAILED %s %s\n", p, strerror(errno));
    _exit(1);
  }
  struct pollfd pfd = {.fd = lfd, .events = POLLIN};
  if (poll(&pfd, 1, 90000) != 1) {
    printf("HOST-VSOCK-NO-GUEST-CONNECTION\n");
    _exit(1);
  }
  int fd = accept(lfd, NULL, NULL);
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf + got, 4096 - 1 - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  buf[got] = 0;
  printf("HOST-VSOCK-FROM-GUEST %s\n", buf);
  write_all(fd, "hello-from-host\n", 16);
  close(fd);
  close(lfd);
  unlink(p);
  _exit(0);
}

/* Connects to PATH and asks for the guest's PORT; retries while the guest is not listening. */
static int guest_stream(const char *path, unsigned port, const char *command) {
  double deadline = now() + 60;
  int attempts = 0;
  while (now() < deadline) {
    attempts++;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = unix_addr(path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
      char line[64];
      int n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
      if (write_all(fd, line, (size_t)n) == 0 && read_line(fd, line, sizeof(line)) > 0 &&
          strncmp(line, "OK ", 3) == 0) {
        if (attempts > 1) printf("HOST-VSOCK-CONNECT-ATTEMPTS %d\n", attempts);
        if (command && write_all(fd, command, strlen(command)) < 0) return -1;
        return fd;
      }
    }
    if (fd >= 0) close(fd);
    usleep(200 * 1000);
  }
  printf("HOST-VSOCK-CONNECT-FAILED %s port %u after %d attempts\n", path, port, attempts);
  return -1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc != 6) {
    fprintf(stderr, "usage: vsockhost PATH GUEST_PORT HOST_PORT BYTES ROUNDS\n");
    return 2;
  }
  const char *path = argv[1];
  unsigned gport = (unsigned)atoi(argv[2]), hport = (unsigned)atoi(argv[3]);
  unsigned long long bytes = strtoull(argv[4], NULL, 10);
  int rounds = atoi(argv[5]);
  signal(SIGPIPE, SIG_IGN);
  alarm(110);
  pid_t child = fork();
  if (child == 0) host_service(path, hport);

  int ok = 1;
  /* Echo check. */
  int fd = guest_stream(path, gport, "ECHO\n");
  if (fd < 0) return 1;
  const char *msg = "ping-from-host";
  char back[64] = {0};
  write_all(fd, msg, strlen(msg));
  shutdown(fd, SHUT_WR);
  if (read_exact(fd, back, strlen(msg)) == 0 && memcmp(back, msg, strlen(msg)) == 0) {
    printf("HOST-VSOCK-ECHO-OK %s\n", back);
  } else {
    printf("HOST-VSOCK-ECHO-MISMATCH '%s'\n", back);
    ok = 0;
  }
  close(fd);

  /* Round trips of 64 bytes. */
  if (rounds > 0 && (fd = guest_stream(path, gport, "ECHO\n")) >= 0) {
    double *rtt = calloc((size_t)rounds, sizeof(double));
    char small[64];
    memset(small, 'r', sizeof(small));
    int done = 0;
    for (; done < rounds; done++) {
      double t0 = now();
      if (write_all(fd, small, sizeof(small)) < 0 || read_exact(fd, buf, sizeof(small)) < 0) break;
      rtt[done] = (now() - t0) * 1e6;
    }
    if (done == rounds) {
      qsort(rtt, (size_t)rounds, sizeof(double), cmp_double);
      printf("HOST-VSOCK-BENCH rtt64 rounds=%d p50_us=%.1f p99_us=%.1f\n", rounds,
             rtt[rounds / 2], rtt[rounds * 99 / 100]);
    } else {
      printf("HOST-VSOCK-RTT-FAILED after %d\n", done);
      ok = 0;
    }
    close(fd);
  }

  /* Host -> guest bulk. */
  if (bytes > 0 && (fd = guest_stream(path, gport, "SINK\n")) >= 0) {
    memset(buf, 'h', sizeof(buf));
    double t0 = now();
    unsigned long long left = bytes;
    while (left > 0) {
      size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);
      if (write_all(fd, buf, n) < 0) break;
      left -= n;
    }
    shutdown(fd, SHUT_WR);
    char line[64];
    unsigned long long got = 0;
    if (read_line(fd, line, sizeof(line)) > 0) sscanf(line, "GOT %llu", &got);
    double secs = now() - t0;
    printf("HOST-VSOCK-BENCH to_guest bytes=%llu got=%llu MBps=%.1f\n", bytes, got,
           got / secs / 1e6);
    if (got != bytes) ok = 0;
    close(fd);
  }

  /* Guest -> host bulk. */
  if (bytes > 0) {
    char command[64];
    snprintf(command, sizeof(command), "SOURCE %llu\n", bytes);
    if ((fd = guest_stream(path, gport, command)) >= 0) {
      double t0 = now();
      unsigned long long got = 0;
      for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (unsigned long long)r;
      }
      double secs = now() - t0;
      printf("HOST-VSOCK-BENCH from_guest bytes=%llu got=%llu MBps=%.1f\n", bytes, got,
             got / secs / 1e6);
      if (got != bytes) ok = 0;
      close(fd);
    }
  }

  if ((fd = guest_stream(path, gport, "QUIT\n")) >= 0) {
    char line[16];
    if (read_line(fd, line, sizeof(line)) > 0 && strcmp(line, "BYE") == 0) printf("HOST-VSOCK-QUIT-OK\n");
    close(fd);
  }
  int status = 1;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = 0;
  printf("HOST-VSOCK-%s\n", ok ? "ALL-OK" : "FAILED");
  return ok ? 0 : 1;
}
