// SPDX-License-Identifier: GPL-2.0
/*
 * receiver - receive one UDP message on ADDR:PORT through the lab's second network card
 * (lab 2; run it in the receiver's network namespace).
 *
 * Usage: ./receiver [ADDR [PORT]]     (defaults: 169.254.10.2 9999)
 *
 * Output:
 *   receiver: listening on ADDR:PORT
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

#define DEFAULT_ADDR "169.254.10.2"
#define DEFAULT_PORT 9999
/* a whole one-frame message (1500-byte MTU - 20 IP - 8 UDP), so copy #4 moves all of it */
#define BUF_LEN 1472

/* copy #4 writes here */
static char buf[BUF_LEN];

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
	const char *addr = DEFAULT_ADDR;
	int port = DEFAULT_PORT;
	struct sockaddr_in sa;
	ssize_t n;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);

	if (argc > 3) {
		fprintf(stderr, "usage: %s [ADDR [PORT]]\n", argv[0]);
		return 2;
	}
	if (argc > 1)
		addr = argv[1];
	if (argc > 2) {
		port = parse_port(argv[2]);
		if (port < 0) {
			fprintf(stderr, "receiver: invalid port \"%s\" (expected 1-65535)\n", argv[2]);
			return 2;
		}
	}

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "receiver: invalid IPv4 address \"%s\"\n", addr);
		return 2;
	}

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		fprintf(stderr, "receiver: socket: %s\n", strerror(errno));
		return 1;
	}
	/* EADDRNOTAVAIL here: not in the receiver's namespace, or the lab network is not up */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "receiver: bind %s:%d: %s (is the lab network up? `make net`)\n",
			addr, port, strerror(errno));
		close(fd);
		return 1;
	}
	printf("receiver: listening on %s:%d\n", addr, port);

	/*
	 * TODO(1): [milestone 0] as in lab 1: print where recv() will put the message, exactly as
	 *   receiver: buffer at <address>
	 * using printf's %p on buf.
	 */

	/*
	 * TODO(2): [milestone 0] wait for one datagram with recv(fd, buf, BUF_LEN, 0) and store
	 * its return value in n. On failure print an error with strerror(errno) to stderr,
	 * close fd and return 1.
	 */
	n = 0;	// nothing received yet

	printf("receiver: received %zd bytes \"%.*s\"\n", n, (int)n, buf);

	if (close(fd) < 0) {
		fprintf(stderr, "receiver: close: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
