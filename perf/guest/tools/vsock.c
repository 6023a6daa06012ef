/* vsock: the guest side of Volt's virtio-vsock test and benchmark (busybox has no AF_VSOCK).
 *
 *   vsock connect CID PORT MESSAGE   connect, send MESSAGE, half-close, print the reply as
 *                                    `VOLT-VSOCK-REPLY <reply>` (failure: VOLT-VSOCK-CONNECT-FAILED)
 *   vsock serve PORT                 print `VOLT-VSOCK-LISTENING PORT`, then serve connections
 *                                    one at a time; each starts with a command line:
 *                                      ECHO\n         echo every byte back until end-of-file
 *                                      SINK\n         read to end-of-file, answer `GOT <bytes>\n`
 *                                      SOURCE <n>\n   write n bytes, then close
 *                                      QUIT\n         answer `BYE\n` and exit 0
 * Built statically into the test rootfs by perf/guest/build-rootfs.sh.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "fdio.h"

static char buf[64 * 1024];

static int do_connect(unsigned cid, unsigned port, const char *msg) {
  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
    printf("VOLT-VSOCK-CONNECT-FAILED %u:%u %s\n", cid, port, strerror(errno));
    return 1;
  }
  if (write_all(fd, msg, strlen(msg)) < 0 || shutdown(fd, SHUT_WR) < 0) {
    printf("VOLT-VSOCK-SEND-FAILED %s\n", strerror(errno));
    return 1;
  }
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  buf[got] = 0;
  if (got > 0 && buf[got - 1] == '\n') buf[got - 1] = 0;
  printf("VOLT-VSOCK-REPLY %s\n", buf);
  close(fd);
  return 0;
}

/* Serves one connection; returns 1 when told to quit. */
static int serve_one(int fd) {
  char line[64];
  if (read_line(fd, line, sizeof(line)) < 0) return 0;
  if (strcmp(line, "ECHO") == 0) {
    for (;;) {
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || write_all(fd, buf, (size_t)r) < 0) break;
    }
  } else if (strcmp(line, "SINK") == 0) {
    unsigned long long total = 0;
    for (;;) {
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      total += (unsigned long long)r;
    }
    int n = snprintf(line, sizeof(line), "GOT %llu\n", total);
    write_all(fd, line, (size_t)n);
  } else if (strncmp(line, "SOURCE ", 7) == 0) {
    unsigned long long left = strtoull(line + 7, NULL, 10);
    memset(buf, 'v', sizeof(buf));
    while (left > 0) {
      size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);
      if (write_all(fd, buf, n) < 0) break;
      left -= n;
    }
  } else if (strcmp(line, "QUIT") == 0) {
    write_all(fd, "BYE\n", 4);
    return 1;
  } else {
    printf("VOLT-VSOCK-BAD-COMMAND %s\n", line);
  }
  return 0;
}

static int do_serve(unsigned port) {
  int lfd = socket(AF_VSOCK, SOCK_STREAM, 0);
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4) < 0) {
    printf("VOLT-VSOCK-LISTEN-FAILED %u %s\n", port, strerror(errno));
    return 1;
  }
  printf("VOLT-VSOCK-LISTENING %u\n", port);
  fflush(stdout);
  int served = 0;
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR) continue;
      printf("VOLT-VSOCK-ACCEPT-FAILED %s\n", strerror(errno));
      return 1;
    }
    int quit = serve_one(fd);
    close(fd);
    served++;
    if (quit) break;
  }
  printf("VOLT-VSOCK-SERVED %d\n", served);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 5 && strcmp(argv[1], "connect") == 0)
    return do_connect((unsigned)strtoul(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10), argv[4]);
  if (argc == 3 && strcmp(argv[1], "serve") == 0)
    return do_serve((unsigned)strtoul(argv[2], NULL, 10));
  fprintf(stderr, "usage: vsock connect CID PORT MESSAGE | vsock serve PORT\n");
  return 2;
}
