/* A minimal HTTP/1.1 client for Volt's API socket, for payloads (the nested guest has no curl).
 * usage: apicall SOCKET METHOD PATH [JSON_BODY]
 * Prints `HOST-API METHOD PATH STATUS` and the body on the next line; exit 0 for a 2xx. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: apicall SOCKET METHOD PATH [BODY]\n");
    return 2;
  }
  const char *body = argc > 4 ? argv[4] : "";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
  int tries = 0;
  while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
    if (++tries > 500) { perror("connect"); return 1; }
    usleep(10000);
  }
  char request[8192];
  int n = snprintf(request, sizeof(request),
                   "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n%s", argv[2],
                   argv[3], strlen(body), body);
  if (write(fd, request, n) != n) { perror("write"); return 1; }
  char answer[8192];
  size_t got = 0;
  ssize_t r;
  while (got < sizeof(answer) - 1 && (r = read(fd, answer + got, sizeof(answer) - 1 - got)) > 0) {
    got += r;
    answer[got] = 0;
    char *end = strstr(answer, "\r\n\r\n");
    if (!end) continue;
    char *cl = strstr(answer, "Content-Length: ");
    size_t len = cl ? strtoul(cl + 16, NULL, 10) : 0;
    if (got >= (size_t)(end + 4 - answer) + len) break;
  }
  answer[got] = 0;
  int status = 0;
  sscanf(answer, "HTTP/1.1 %d", &status);
  char *end = strstr(answer, "\r\n\r\n");
  printf("HOST-API %s %s %d\n%s\n", argv[2], argv[3], status, end ? end + 4 : "");
  return status >= 200 && status < 300 ? 0 : 1;
}
