// SPDX-License-Identifier: GPL-2.0
/*
 * receiver - receive one UDP message on 127.0.0.1:PORT (lab 1).
 *
 * Usage: ./receiver [PORT]     (default: 9999)
 *
 * Output:
 *   receiver: listening on 127.0.0.1:PORT
 *   receiver: buffer at <address of the buffer recv() fills>
 *   receiver: received N bytes "TEXT"
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define DEFAULT_PORT 9999
#define BUF_LEN 16

static int parse_port(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 65535)
		return -1;
	return (int)v;
}

int main(int argc, char **argv)
{
	int port = DEFAULT_PORT;
	struct sockaddr_in addr;
	char buf[BUF_LEN];	/* copy #4 writes here */
	ssize_t n;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);

	if (argc > 2) {
		fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
		return 2;
	}
	if (argc > 1) {
		port = parse_port(argv[1]);
		if (port < 0) {
			fprintf(stderr, "receiver: invalid port \"%s\" (expected 1-65535)\n", argv[1]);
			return 2;
		}
	}

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		fprintf(stderr, "receiver: socket: %s\n", strerror(errno));
		return 1;
	}

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		fprintf(stderr, "receiver: bind 127.0.0.1:%d: %s\n", port, strerror(errno));
		close(fd);
		return 1;
	}
	printf("receiver: listening on 127.0.0.1:%d\n", port);

	/*
	 * TODO(1): [milestone 0] print where recv() will put the message, exactly as
	 *   receiver: buffer at <address>
	 * using printf's %p on buf.
	 */
	/* BEGIN SOLUTION */
	printf("receiver: buffer at %p\n", (void *)buf);
	/* END SOLUTION */

	/*
	 * TODO(2): [milestone 0] wait for one datagram with recv(fd, buf, 16, 0) and store
	 * its return value in n. On failure print an error with
	 * strerror(errno) to stderr, close fd and return 1.
	 */
	/* BEGIN SOLUTION */
	n = recv(fd, buf, BUF_LEN, 0);
	if (n < 0) {
		fprintf(stderr, "receiver: recv: %s\n", strerror(errno));
		close(fd);
		return 1;
	}
	/* END SOLUTION */
	/* SKELETON: n = 0;	// nothing received yet */

	printf("receiver: received %zd bytes \"%.*s\"\n", n, (int)n, buf);

	if (close(fd) < 0) {
		fprintf(stderr, "receiver: close: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
