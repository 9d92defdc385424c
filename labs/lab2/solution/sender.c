// SPDX-License-Identifier: GPL-2.0
/*
 * sender - send one UDP message to ADDR:PORT through the lab's first network card (lab 2).
 *
 * Usage: ./sender [MESSAGE [ADDR [PORT]]]     (defaults: HELLO_SEND_TRACE 169.254.10.2 9999)
 *
 * Output:
 *   sender: buffer at <address of the bytes handed to sendto()>
 *   sender: sent N bytes "TEXT" to ADDR:PORT
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

#define DEFAULT_MESSAGE "HELLO_SEND_TRACE"
#define DEFAULT_ADDR "169.254.10.2"
#define DEFAULT_PORT 9999
#define FRAME_PAYLOAD 1472	/* 1500-byte MTU - 20 (IP) - 8 (UDP): the most one frame carries */
#define MAX_MESSAGE 65507	/* largest UDP payload over IPv4 */

/* the bytes copy #1 reads: the message lives here while sendto() runs */
static char buf[MAX_MESSAGE];

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
	const char *message = DEFAULT_MESSAGE;
	const char *addr = DEFAULT_ADDR;
	int port = DEFAULT_PORT;
	struct sockaddr_in dst;
	size_t len;
	ssize_t n;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);

	if (argc > 4) {
		fprintf(stderr, "usage: %s [MESSAGE [ADDR [PORT]]]\n", argv[0]);
		return 2;
	}
	if (argc > 1)
		message = argv[1];
	if (argc > 2)
		addr = argv[2];
	if (argc > 3) {
		port = parse_port(argv[3]);
		if (port < 0) {
			fprintf(stderr, "sender: invalid port \"%s\" (expected 1-65535)\n", argv[3]);
			return 2;
		}
	}

	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	dst.sin_port = htons(port);
	if (inet_pton(AF_INET, addr, &dst.sin_addr) != 1) {
		fprintf(stderr, "sender: invalid IPv4 address \"%s\"\n", addr);
		return 2;
	}

	len = strlen(message);
	if (len > MAX_MESSAGE) {
		fprintf(stderr, "sender: message is %zu bytes, more than a UDP datagram holds (%d)\n",
			len, MAX_MESSAGE);
		return 2;
	}
	if (len > FRAME_PAYLOAD)
		fprintf(stderr,
			"sender: warning: message is %zu bytes; it will not fit in one frame (%d) and the receiver truncates it\n",
			len, FRAME_PAYLOAD);
	memcpy(buf, message, len);

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		fprintf(stderr, "sender: socket: %s\n", strerror(errno));
		return 1;
	}

	/*
	 * TODO(1): [milestone 0] as in lab 1: print where the message lives, exactly as
	 *   sender: buffer at <address>
	 * using printf's %p on buf.
	 */
	/* BEGIN SOLUTION */
	printf("sender: buffer at %p\n", (void *)buf);
	/* END SOLUTION */

	/*
	 * TODO(2): [milestone 0] as in lab 1: send the len bytes of buf to dst with ONE
	 * sendto() call and store its return value in n. On failure print an error
	 * naming addr and port with strerror(errno) to stderr, close fd and return 1.
	 */
	/* BEGIN SOLUTION */
	n = sendto(fd, buf, len, 0, (struct sockaddr *)&dst, sizeof(dst));
	if (n < 0) {
		fprintf(stderr, "sender: sendto %s:%d: %s\n", addr, port, strerror(errno));
		close(fd);
		return 1;
	}
	/* END SOLUTION */
	/* SKELETON: n = 0;	// nothing sent yet */

	printf("sender: sent %zd bytes \"%.*s\" to %s:%d\n", n, (int)n, buf, addr, port);

	if (close(fd) < 0) {
		fprintf(stderr, "sender: close: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
