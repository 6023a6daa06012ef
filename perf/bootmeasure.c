/*
 * bootmeasure: run one VMM boot and time it from the outside.
 *
 * usage: bootmeasure [-o STDOUT_FILE] [-e STDERR_FILE] [-m MARKER] [-g GUEST_MB] [-s SAMPLE_MS]
 *                    [-t TIMEOUT_S] -- VMM ARGS...
 *
 * All times are microseconds since just before fork() (= "VMM start"), on CLOCK_MONOTONIC:
 *   entry_log_us  volt's own figure from its stderr line "vcpu0 entered guest after N us" (-1: none)
 *   first_byte_us first byte on the VMM's stdout (the guest's serial console)
 *   marker_us     first stdout line containing MARKER (e.g. VOLT-INIT-READY)
 *   exit_us       the VMM process has exited (wall time)
 * Memory (only with -s, because sampling /proc/PID/smaps perturbs timing):
 *   every SAMPLE_MS the child's smaps is read; a writable mapping of at least GUEST_MB/2 MiB is
 *   counted as guest RAM, everything else as the VMM's own. Reported: the largest own_rss_kb seen
 *   (and guest_rss_kb, total_rss_kb of that sample), plus hwm_kb = ru_maxrss (VmHWM, guest incl.).
 * One result line goes to stdout:
 *   BOOTMEASURE status=S entry_log_us=.. first_byte_us=.. marker_us=.. exit_us=.. hwm_kb=..
 *               own_rss_kb=.. guest_rss_kb=.. total_rss_kb=..
 * status is the exit status (128+signal when killed, 124 on timeout).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Growing byte buffer holding one stream's whole output (boot logs are small). */
struct stream {
	int fd;
	FILE *copy;
	char *buf;
	size_t len, cap, scanned;
};

static void stream_append(struct stream *s, const char *data, size_t n)
{
	if (s->len + n + 1 > s->cap) {
		s->cap = (s->len + n + 1) * 2;
		s->buf = realloc(s->buf, s->cap);
		if (!s->buf) {
			perror("bootmeasure: realloc");
			exit(2);
		}
	}
	memcpy(s->buf + s->len, data, n);
	s->len += n;
	s->buf[s->len] = 0;
	if (s->copy)
		fwrite(data, 1, n, s->copy);
}

/* Finds `needle` in the part of the stream not yet searched (keeping an overlap). */
static const char *stream_find(struct stream *s, const char *needle)
{
	size_t nl = strlen(needle);
	size_t from = s->scanned > nl ? s->scanned - nl : 0;
	const char *hit = strstr(s->buf + from, needle);
	s->scanned = s->len;
	return hit;
}

struct mem_sample {
	long total_kb, guest_kb;
};

static int sample_smaps(pid_t pid, unsigned long guest_threshold, struct mem_sample *out)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long total = 0, guest = 0;
	int current_is_guest = 0, lines = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end;
		char perms[8];
		long kb;
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3) {
			current_is_guest = perms[1] == 'w' && end - start >= guest_threshold;
			lines++;
		} else if (sscanf(line, "Rss: %ld kB", &kb) == 1) {
			total += kb;
			if (current_is_guest)
				guest += kb;
		}
	}
	fclose(f);
	if (lines == 0)
		return -1; /* zombie: nothing mapped any more */
	out->total_kb = total;
	out->guest_kb = guest;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: bootmeasure [-o OUT] [-e ERR] [-m MARKER] [-g GUEST_MB] [-s SAMPLE_MS] "
			"[-t TIMEOUT_S] -- VMM ARGS...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *out_path = NULL, *err_path = NULL, *marker = "VOLT-INIT-READY";
	long guest_mb = 256, sample_ms = 0, timeout_s = 120;
	int opt;
	while ((opt = getopt(argc, argv, "+o:e:m:g:s:t:")) != -1) {
		switch (opt) {
		case 'o': out_path = optarg; break;
		case 'e': err_path = optarg; break;
		case 'm': marker = optarg; break;
		case 'g': guest_mb = atol(optarg); break;
		case 's': sample_ms = atol(optarg); break;
		case 't': timeout_s = atol(optarg); break;
		default: usage();
		}
	}
	if (optind >= argc)
		usage();

	int out_pipe[2], err_pipe[2];
	if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC)) {
		perror("bootmeasure: pipe");
		return 2;
	}
	long long t0 = now_us();
	pid_t pid = fork();
	if (pid < 0) {
		perror("bootmeasure: fork");
		return 2;
	}
	if (pid == 0) {
		dup2(out_pipe[1], 1);
		dup2(err_pipe[1], 2);
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		execvp(argv[optind], argv + optind);
		fprintf(stderr, "bootmeasure: exec %s: %s\n", argv[optind], strerror(errno));
		_exit(127);
	}
	close(out_pipe[1]);
	close(err_pipe[1]);

	struct stream out = { .fd = out_pipe[0] }, err = { .fd = err_pipe[0] };
	if (out_path && !(out.copy = fopen(out_path, "w")))
		perror(out_path);
	if (err_path && !(err.copy = fopen(err_path, "w")))
		perror(err_path);
	stream_append(&out, "", 0);
	stream_append(&err, "", 0);

	long long first_byte = -1, marker_at = -1, entry_log = -1;
	struct mem_sample best = { -1, -1 };
	long best_own = -1;
	unsigned long guest_threshold = (unsigned long)guest_mb * 1024 * 1024 / 2;
	long long deadline = t0 + (long long)timeout_s * 1000000, next_sample = t0;
	int open_fds = 2, timed_out = 0;

	while (open_fds > 0) {
		struct pollfd pfd[2] = { { out.fd, POLLIN, 0 }, { err.fd, POLLIN, 0 } };
		long long t = now_us();
		if (t > deadline) {
			kill(pid, SIGKILL);
			timed_out = 1;
			break;
		}
		int wait_ms = (int)((deadline - t) / 1000) + 1;
		if (sample_ms > 0) {
			if (t >= next_sample) {
				struct mem_sample s;
				if (sample_smaps(pid, guest_threshold, &s) == 0 && s.total_kb - s.guest_kb > best_own) {
					best_own = s.total_kb - s.guest_kb;
					best = s;
				}
				next_sample = t + sample_ms * 1000;
			}
			wait_ms = sample_ms;
		}
		if (poll(pfd, 2, wait_ms) < 0 && errno != EINTR) {
			perror("bootmeasure: poll");
			break;
		}
		struct stream *streams[2] = { &out, &err };
		for (int i = 0; i < 2; i++) {
			if (streams[i]->fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char chunk[65536];
			ssize_t n = read(streams[i]->fd, chunk, sizeof chunk);
			long long at = now_us() - t0;
			if (n <= 0) {
				close(streams[i]->fd);
				streams[i]->fd = -1;
				open_fds--;
				continue;
			}
			stream_append(streams[i], chunk, (size_t)n);
			if (i == 0) {
				if (first_byte < 0)
					first_byte = at;
				if (marker_at < 0 && stream_find(&out, marker))
					marker_at = at;
			} else if (entry_log < 0) {
				const char *hit = stream_find(&err, "vcpu0 entered guest after ");
				if (hit)
					entry_log = atoll(hit + strlen("vcpu0 entered guest after "));
			}
		}
	}

	int wstatus = 0;
	struct rusage ru;
	memset(&ru, 0, sizeof ru);
	wait4(pid, &wstatus, 0, &ru);
	long long exit_at = now_us() - t0;
	int status = timed_out ? 124 : WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
	if (out.copy)
		fclose(out.copy);
	if (err.copy)
		fclose(err.copy);
	printf("BOOTMEASURE status=%d entry_log_us=%lld first_byte_us=%lld marker_us=%lld exit_us=%lld "
	       "hwm_kb=%ld own_rss_kb=%ld guest_rss_kb=%ld total_rss_kb=%ld\n",
	       status, entry_log, first_byte, marker_at, exit_at, ru.ru_maxrss, best_own, best.guest_kb,
	       best.total_kb);
	return status == 0 ? 0 : 1;
}
