/*
 * iobench: in-guest I/O benchmarks for perf/io-bench.sh (built statically into the guest's /bin
 * by perf/guest/build-rootfs.sh).
 *
 *   iobench disk DEV [QD1_OPS] [QD32_SECONDS]
 *     4 KiB random reads with O_DIRECT over the whole device. Queue depth 1: QD1_OPS reads one
 *     after the other, latency p50/p99/mean. Queue depth 32: 32 threads with one read each in
 *     flight for QD32_SECONDS (the project's guest kernel has neither io_uring nor libaio, so
 *     depth 32 is 32 threads), total IOPS and MiB/s. One line:
 *     IOBENCH-DISK qd1_ops=N qd1_p50_us=.. qd1_p99_us=.. qd1_mean_us=.. qd32_ops=N qd32_iops=.. qd32_mibs=..
 *
 *   iobench udp HOST PORT [COUNT]
 *     64-byte UDP ping-pong with an echo server: round-trip p50/p99 over COUNT exchanges (after
 *     20 unmeasured ones); a reply missing for 1 s counts as lost. One line:
 *     IOBENCH-UDP count=N lost=N p50_us=.. p99_us=.. mean_us=..
 *
 * Exit status 0 on success, 1 with a message on stderr otherwise.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define THREADS 32

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double pct(const double *sorted, int n, double p)
{
	int i = (int)(p / 100.0 * (n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

static void die(const char *what)
{
	fprintf(stderr, "iobench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int disk_fd;
static uint64_t disk_blocks;
static atomic_int stop;
static atomic_long total_ops;
static atomic_int failures;

static void *reader(void *arg)
{
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ ((uintptr_t)arg * 0x100000001b3ULL);
	void *buf;
	long ops = 0;
	if (posix_memalign(&buf, BLOCK, BLOCK))
		return NULL;
	while (!atomic_load(&stop)) {
		off_t off = (off_t)(xorshift(&seed) % disk_blocks) * BLOCK;
		if (pread(disk_fd, buf, BLOCK, off) != BLOCK) {
			atomic_fetch_add(&failures, 1);
			break;
		}
		ops++;
	}
	atomic_fetch_add(&total_ops, ops);
	free(buf);
	return NULL;
}

static int disk(const char *dev, int qd1_ops, int qd32_seconds)
{
	uint64_t size, seed = 0x2545f4914f6cdd1dULL;
	void *buf;
	double *lat, sum = 0, t0;
	pthread_t threads[THREADS];

	disk_fd = open(dev, O_RDONLY | O_DIRECT);
	if (disk_fd < 0)
		die(dev);
	if (ioctl(disk_fd, BLKGETSIZE64, &size) < 0)
		die("BLKGETSIZE64");
	disk_blocks = size / BLOCK;
	if (disk_blocks == 0) {
		fprintf(stderr, "iobench: %s is smaller than 4 KiB\n", dev);
		return 1;
	}
	if (posix_memalign(&buf, BLOCK, BLOCK) || !(lat = calloc(qd1_ops, sizeof *lat)))
		die("memory");
	for (int i = 0; i < 20; i++) /* warm up: first touches, driver state */
		if (pread(disk_fd, buf, BLOCK, (off_t)(xorshift(&seed) % disk_blocks) * BLOCK) != BLOCK)
			die("read");
	for (int i = 0; i < qd1_ops; i++) {
		off_t off = (off_t)(xorshift(&seed) % disk_blocks) * BLOCK;
		double start = now_us();
		if (pread(disk_fd, buf, BLOCK, off) != BLOCK)
			die("read");
		lat[i] = now_us() - start;
		sum += lat[i];
	}
	qsort(lat, qd1_ops, sizeof *lat, cmp_double);

	t0 = now_us();
	for (long i = 0; i < THREADS; i++)
		if (pthread_create(&threads[i], NULL, reader, (void *)(i + 1)))
			die("pthread_create");
	sleep(qd32_seconds);
	atomic_store(&stop, 1);
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	double elapsed = (now_us() - t0) / 1e6;
	if (atomic_load(&failures)) {
		fprintf(stderr, "iobench: %d reader(s) failed\n", atomic_load(&failures));
		return 1;
	}
	long ops = atomic_load(&total_ops);
	printf("IOBENCH-DISK qd1_ops=%d qd1_p50_us=%.1f qd1_p99_us=%.1f qd1_mean_us=%.1f "
	       "qd32_ops=%ld qd32_iops=%.0f qd32_mibs=%.2f\n",
	       qd1_ops, pct(lat, qd1_ops, 50), pct(lat, qd1_ops, 99), sum / qd1_ops, ops,
	       ops / elapsed, ops * (double)BLOCK / elapsed / (1 << 20));
	return 0;
}

static int udp(const char *host, int port, int count)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct timeval timeout = { .tv_sec = 1 };
	char msg[64], reply[64];
	double *rtt, sum = 0;
	int fd, measured = 0, lost = 0;

	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		fprintf(stderr, "iobench: bad IPv4 address %s\n", host);
		return 1;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("udp socket");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0)
		die("SO_RCVTIMEO");
	if (!(rtt = calloc(count, sizeof *rtt)))
		die("memory");
	for (int i = -20; i < count; i++) {
		double start;
		memset(msg, 0, sizeof msg);
		snprintf(msg, sizeof msg, "volt-iobench %d", i);
		start = now_us();
		if (send(fd, msg, sizeof msg, 0) != sizeof msg)
			die("send");
		for (;;) {
			ssize_t n = recv(fd, reply, sizeof reply, 0);
			if (n < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK) {
					lost += i >= 0;
					break;
				}
				die("recv");
			}
			if (n == sizeof msg && memcmp(reply, msg, sizeof msg) == 0) {
				if (i >= 0) {
					rtt[measured] = now_us() - start;
					sum += rtt[measured++];
				}
				break;
			}
			/* a late reply to an earlier (lost) message: keep waiting for ours */
		}
	}
	if (measured == 0) {
		fprintf(stderr, "iobench: no UDP reply from %s:%d\n", host, port);
		return 1;
	}
	qsort(rtt, measured, sizeof *rtt, cmp_double);
	printf("IOBENCH-UDP count=%d lost=%d p50_us=%.1f p99_us=%.1f mean_us=%.1f\n", measured, lost,
	       pct(rtt, measured, 50), pct(rtt, measured, 99), sum / measured);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && strcmp(argv[1], "disk") == 0) {
		int ops = argc > 3 ? atoi(argv[3]) : 2000, seconds = argc > 4 ? atoi(argv[4]) : 5;
		if (ops < 1 || seconds < 1) {
			fprintf(stderr, "iobench: QD1_OPS and QD32_SECONDS must be >= 1\n");
			return 1;
		}
		return disk(argv[2], ops, seconds);
	}
	if (argc >= 4 && strcmp(argv[1], "udp") == 0) {
		int count = argc > 4 ? atoi(argv[4]) : 1000;
		if (count < 1) {
			fprintf(stderr, "iobench: COUNT must be >= 1\n");
			return 1;
		}
		return udp(argv[2], atoi(argv[3]), count);
	}
	fprintf(stderr, "usage: iobench disk DEV [QD1_OPS] [QD32_SECONDS]\n"
			"       iobench udp HOST PORT [COUNT]\n");
	return 1;
}
