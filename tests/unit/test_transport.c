/* test_transport.c - activation checksums, the test pattern, the shm and tcp channels, and
 * qwen-transport-check end to end: every transfer verified, a flipped bit caught on each
 * transport, the two-host tcp mode over loopback. */
#include "tests/unit/helpers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli/transport_check.h"
#include "ipc/channel.h"
#include "ipc/checksum.h"
#include "loader/dtype.h"

static void test_checksum(void **state)
{
	size_t n = 3 * QW_CHECKSUM_CHUNK + 123;
	uint8_t *buf = malloc(n);
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(i * 31 + 7);
	/* the definition, written out with the library */
	uint64_t h[4];
	for (int i = 0; i < 4; i++) {
		size_t off = (size_t)i * QW_CHECKSUM_CHUNK, k = n - off < QW_CHECKSUM_CHUNK ? n - off
										    : QW_CHECKSUM_CHUNK;
		h[i] = XXH64(buf + off, k, (XXH64_hash_t)i);
	}
	uint64_t want = XXH64(h, sizeof h, (XXH64_hash_t)n);
	assert_true(qw_checksum(buf, n) == want);
	/* any one flipped bit changes it */
	for (size_t at = 0; at < n; at += 997) {
		buf[at] ^= 0x20;
		assert_true(qw_checksum(buf, n) != want);
		buf[at] ^= 0x20;
	}
	assert_true(qw_checksum(buf, n - 1) != want);   /* and the length */
	free(buf);
}

static void test_pattern(void **state)
{
	enum { N = 1 << 16 };
	uint8_t *a = malloc(N), *b = malloc(N);
	tc_dtype types[] = {TC_FP16, TC_BF16, TC_FP32, TC_FP8};
	for (int t = 0; t < 4; t++) {
		tc_fill(a, N, types[t], 1234, 0, 3);
		tc_fill(b, N, types[t], 1234, 0, 3);
		assert_memory_equal(a, b, N);                   /* deterministic */
		tc_fill(b, N, types[t], 1234, 1, 3);
		assert_true(memcmp(a, b, N) != 0);              /* per stage */
		for (int i = 0; i < N; i += types[t] == TC_FP32 ? 4 : types[t] == TC_FP8 ? 1 : 2) {
			float v;
			uint16_t h = 0;
			if (types[t] == TC_BF16 || types[t] == TC_FP16)
				memcpy(&h, a + i, 2);
			if (types[t] == TC_FP32)
				memcpy(&v, a + i, 4);
			else if (types[t] == TC_BF16)
				v = qw_bf16_to_f32(h);
			else if (types[t] == TC_FP16)
				v = qw_f16_to_f32(h);
			else
				v = qw_f8e4m3_to_f32(a[i]);
			if (!isfinite(v))
				fail_msg("dtype %d: element at byte %d is not finite", t, i);
		}
	}
	free(a);
	free(b);
}

static void test_channels(void **state)
{
	qw_channel c;
	qw_err err = {0};
	assert_int_equal(qw_shm_channel_create(4096, &c, &err), QW_OK);
	enum { N = 100000 };                /* larger than the ring: it streams */
	uint8_t *out = malloc(N), *in = malloc(N);
	for (int i = 0; i < N; i++)
		out[i] = (uint8_t)(i ^ (i >> 8));
	pid_t pid = fork();
	if (pid == 0)
		_exit(c.send(&c, out, N, &err) != QW_OK);
	assert_int_equal(c.recv(&c, in, N, &err), QW_OK);
	int status;
	waitpid(pid, &status, 0);
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_memory_equal(in, out, N);
	c.close(&c);

	int port = 0, lfd;
	assert_int_equal(qw_tcp_listen("127.0.0.1", &port, &lfd, &err), QW_OK);
	assert_true(port > 0);
	pid = fork();
	if (pid == 0) {
		qw_channel cc;
		_exit(qw_tcp_connect("127.0.0.1", port, &cc, &err) != QW_OK ||
		      cc.send(&cc, out, N, &err) != QW_OK);
	}
	qw_channel sc;
	assert_int_equal(qw_tcp_accept(lfd, &sc, &err), QW_OK);
	memset(in, 0, N);
	assert_int_equal(sc.recv(&sc, in, N, &err), QW_OK);
	assert_memory_equal(in, out, N);
	waitpid(pid, &status, 0);
	assert_int_equal(sc.recv(&sc, in, 1, &err), QW_E_IO);   /* the peer has gone */
	assert_contains(err.msg, "closed");
	sc.close(&sc);
	close(lfd);
	assert_int_equal(qw_tcp_connect("127.0.0.1", port, &sc, &err), QW_E_IO);
	free(out);
	free(in);
}

static void test_tool(void **state)
{
	const char *transports[] = {"shm", "tcp"};
	for (int t = 0; t < 2; t++) {
		char *out;
		assert_int_equal(run_capture(&out, "%s --transport %s --stages 3 --sizes 512:256K --iters 3 "
					     "--dtype fp32 --json", program("qwen-transport-check"),
					     transports[t]), 0);
		assert_contains(out, "\"verified\": 60");
		assert_contains(out, "\"wrong\": 0");
		free(out);
		assert_int_equal(run_capture(&out, "%s --transport %s --shape 4,8,64 --dtype fp8 --corrupt",
					     program("qwen-transport-check"), transports[t]), 1);
		assert_contains(out, "MISMATCH hop 0 -> 1");
		assert_contains(out, "19 of 20 transfers verified, 1 mismatched");
		free(out);
	}
	char *out;
	/* receivers that verify after the ack for small sizes and as data arrives for large */
	assert_int_equal(run_capture(&out, "QW_TC_STAGING_BYTES=20000 %s --transport shm --sizes "
				     "1K:64K --iters 4", program("qwen-transport-check")), 0);
	assert_contains(out, "28 of 28 transfers verified");
	free(out);
	/* bad usage: said once, naming the option and what it takes */
	static const struct {
		const char *args, *says;
	} usage[] = {
		{"--transport carrier-pigeon", "--transport: 'carrier-pigeon' is not shm, tcp or nccl\n"},
		{"--shape 1,8", "--transport is required: shm, tcp or nccl\n"},
		{"--transport shm --mode relay", "--mode: 'relay' is not local, server or client\n"},
		{"--transport shm --mode server --port 1", "--mode server needs --transport tcp"},
		{"--transport tcp --mode client --port 1", "(and --host for the client)\n"},
		{"--transport shm --sizes 64K", "--shape / --sizes: expected e.g."},
		{"--transport shm stray", "'stray': no arguments besides the options"},
	};
	for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
		assert_int_equal(run_capture(&out, "%s %s 2>&1", program("qwen-transport-check"),
					     usage[i].args), 2);
		assert_contains(out, usage[i].says);
		assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out));   /* one line */
		free(out);
	}
	assert_int_equal(run_capture(&out, "%s --transport shm --dtype int4",
				     program("qwen-transport-check")), 2);
	assert_contains(out, "--dtype");
	free(out);
}

/* The two-host mode, both ends on loopback: a server that verifies, a client that sends. */
static void test_tcp_server_client(void **state)
{
	for (int corrupt = 0; corrupt < 2; corrupt++) {
		int port = 20000 + (int)(getpid() % 20000) + corrupt;
		char *dir = scratch_new(), *out;
		char cmd[4096];
		snprintf(cmd, sizeof cmd, "%s --transport tcp --mode server --port %d --once > %s 2>&1 &",
			 program("qwen-transport-check"), port, path_in(dir, "server.txt"));
		assert_int_equal(system(cmd), 0);
		usleep(300000);
		int rc = run_capture(&out, "%s --transport tcp --mode client --host 127.0.0.1 --port %d "
				     "--sizes 1K:1M --iters 4 %s; wait", program("qwen-transport-check"), port,
				     corrupt ? "--corrupt" : "");
		assert_int_equal(rc, 0);                 /* the client only sends */
		free(out);
		for (int i = 0; i < 50; i++) {           /* the server writes its verdict and exits */
			size_t len;
			char *s = read_file(path_in(dir, "server.txt"), &len);
			bool done = strstr(s, "OK\n") || strstr(s, "FAILED\n");
			free(s);
			if (done)
				break;
			usleep(100000);
		}
		char *s = read_file(path_in(dir, "server.txt"), NULL);
		if (corrupt) {
			assert_contains(s, "43 transfers verified, 1 mismatched");
			assert_contains(s, "FAILED");
		} else {
			assert_contains(s, "44 transfers verified, 0 mismatched");
			assert_contains(s, "OK");
		}
		free(s);
		scratch_free(dir);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checksum),
		cmocka_unit_test(test_pattern),
		cmocka_unit_test(test_channels),
		cmocka_unit_test(test_tool),
		cmocka_unit_test(test_tcp_server_client),
	};
	return cmocka_run_group_tests_name("transport", tests, NULL, NULL);
}
