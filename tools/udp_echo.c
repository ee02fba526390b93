/*
 * udp_echo: a plain UDP echo server in C, the yardstick for
 * `tcpecho server --udp` (tools/bench_udp.sh builds and runs it).
 *
 * Batches with recvmmsg/sendmmsg: up to 64 datagrams per system call each
 * way, each sent back to its sender unchanged. Logs
 * `listening on udp:HOST:PORT` on stderr once bound; SIGINT/SIGTERM end it.
 *
 *   gcc -O2 -o udp_echo tools/udp_echo.c && ./udp_echo 0 127.0.0.1
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BATCH = 64, MAX_DATAGRAM = 65536 };

static char bufs[BATCH][MAX_DATAGRAM];

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  const char *host = argc > 2 ? argv[2] : "127.0.0.1";
  struct sockaddr_storage addr = {0};
  socklen_t addr_len;
  int family = strchr(host, ':') ? AF_INET6 : AF_INET;
  if (family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) goto bad_host;
    addr_len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&addr;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) goto bad_host;
    addr_len = sizeof *a;
  }
  int fd = socket(family, SOCK_DGRAM, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&addr, addr_len) < 0 ||
      getsockname(fd, (struct sockaddr *)&addr, &addr_len) < 0) {
    fprintf(stderr, "error: cannot listen on udp:%s:%d: %s\n", host, port,
            strerror(errno));
    return 1;
  }
  port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                  : ((struct sockaddr_in *)&addr)->sin_port);
  fprintf(stderr, family == AF_INET6 ? "listening on udp:[%s]:%d\n"
                                     : "listening on udp:%s:%d\n",
          host, port);

  struct mmsghdr msgs[BATCH];
  struct iovec iovs[BATCH];
  struct sockaddr_storage peers[BATCH];
  for (;;) {
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
      iovs[i] = (struct iovec){.iov_base = bufs[i], .iov_len = MAX_DATAGRAM};
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &peers[i];
      msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
    }
    // Blocks for the first datagram, then takes whatever else is queued.
    int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno != EINTR) perror("recvmmsg");
      continue;
    }
    for (int i = 0; i < n; i++) iovs[i].iov_len = msgs[i].msg_len;
    for (int sent = 0; sent < n;) {
      int m = sendmmsg(fd, msgs + sent, n - sent, 0);
      if (m < 0) { // this datagram cannot go back (ICMP, EMSGSIZE…): skip it
        sent++;
        continue;
      }
      sent += m;
    }
  }

bad_host:
  fprintf(stderr, "error: bad address \"%s\"\n", host);
  return 2;
}
