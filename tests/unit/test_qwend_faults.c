/* test_qwend_faults.c - the daemon under trouble: cancels and clients that vanish free
 * their KV blocks, a full cache queues, a full queue answers busy, malformed requests get
 * errors while others are served, SIGTERM drains, "not ready" while loading, corrupted
 * hand-overs are caught (and the stage that caught one is started again alone), the socket
 * rules, SIGHUP, and the systemd unit.  Killed and hung workers: test_qwend_restart. */
#include "tests/unit/qwend_harness.h"

#include <limits.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "cli/client.h"
#include "daemon/devices.h"
#include "loader/clock.h"

static const char *tiny(void)
{
	return fixture("hf/tiny-moe/model");
}

/* A cancelled request and one whose client hangs up both give their blocks back at once. */
static void test_cancel_and_disconnect(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "300", NULL}, NULL, true);
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	qw_request r = token_request(ids, n, 4000, NULL, 0);

	qw_client a, b;
	open_client(&a, &d);
	uint64_t id = start_streaming(&a, &r);
	assert_true(qwend_status_int(&d, "kv", "blocks_used") > 0);
	open_client(&b, &d);
	qw_request cancel = {.op = QW_OP_CANCEL, .target = id};
	qw_reply rep;
	qw_err err = {0};
	assert_int_equal(qw_client_send(&b, &cancel, &err), QW_OK);
	expect_reply(&b, QW_REPLY_OK, &rep);
	assert_contains(rep.message, "cancelled");
	qw_reply_free(&rep);
	outcome o = {0};
	read_to_end(&a, &o);
	assert_string_equal(o.finish, "cancelled");
	assert_true(o.n_tokens < 4000);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	qwend_wait_for(&d, "requests", "running", 0, 5);
	/* a request that is not there */
	cancel.target = 999;
	assert_int_equal(qw_client_send(&b, &cancel, &err), QW_OK);
	expect_reply(&b, QW_REPLY_ERROR, &rep);
	assert_string_equal(rep.code, "bad_request");
	qw_reply_free(&rep);
	qw_client_close(&a);

	/* a client that goes away mid-stream */
	qw_client c;
	open_client(&c, &d);
	start_streaming(&c, &r);
	assert_true(qwend_status_int(&d, "kv", "blocks_used") > 0);
	qw_client_close(&c);
	qwend_wait_for(&d, "kv", "blocks_used", 0, 5);
	qwend_wait_for(&d, "requests", "cancelled", 2, 5);
	qw_client_close(&b);
	free(ids);
	qwend_stop(&d);
}

/* Admission is by free KV blocks: with a cache that holds one long prompt, the next two
 * queue (status shows them), a third is "busy" past --max-queue 2, a request larger than
 * the whole cache is refused, and the queued ones finish with their solo tokens.  (The
 * prefix cache is off: with it, the same prompt again would share the first's blocks.) */
static void test_kv_exhaustion_and_busy(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "64", "--max-queue", "2",
						 "--prefix-cache", "no", NULL}, NULL, true);
	/* 600 prompt tokens (38 blocks of 16) + 400 new: 63 of the 64 blocks at the end */
	int32_t ids[600];
	for (int i = 0; i < 600; i++)
		ids[i] = 10 + (i * 37) % 890;
	qw_request r = token_request(ids, 600, 400, NULL, 0);
	outcome solo;
	run_request(d.endpoint, &r, &solo);
	assert_int_equal(solo.n_tokens, 400);

	qw_client c[4];
	open_client(&c[0], &d);
	start_streaming(&c[0], &r);
	qw_err err = {0};
	qw_reply rep;
	for (int i = 1; i < 3; i++) {
		open_client(&c[i], &d);
		assert_int_equal(qw_client_send(&c[i], &r, &err), QW_OK);
		expect_reply(&c[i], QW_REPLY_ACCEPTED, &rep);
		qw_reply_free(&rep);
	}
	assert_int_equal(qwend_status_int(&d, "requests", "queued"), 2);
	open_client(&c[3], &d);
	assert_int_equal(qw_client_send(&c[3], &r, &err), QW_OK);
	expect_reply(&c[3], QW_REPLY_ERROR, &rep);
	assert_string_equal(rep.code, "busy");
	qw_reply_free(&rep);
	qw_request big = token_request(ids, 600, 500, NULL, 0);
	assert_int_equal(qw_client_send(&c[3], &big, &err), QW_OK);
	expect_reply(&c[3], QW_REPLY_ERROR, &rep);
	assert_string_equal(rep.code, "too_large");
	assert_contains(rep.message, "the cache holds 64");
	qw_reply_free(&rep);
	for (int i = 0; i < 3; i++) {
		outcome o = {0};
		read_to_end(&c[i], &o);
		assert_string_equal(o.finish, "length");
		/* the first's stream began before finish(): compare what is left */
		assert_memory_equal(o.tokens, solo.tokens + solo.n_tokens - o.n_tokens,
				    (size_t)o.n_tokens * sizeof(int32_t));
		if (i > 0)
			assert_int_equal(o.n_tokens, 400);
	}
	for (int i = 0; i < 4; i++)
		qw_client_close(&c[i]);
	assert_int_equal(qwend_status_int(&d, "kv", "blocks_used"), 0);
	outcome_free(&solo);
	qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// malformed requests

static void pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str(pk, strlen(s));
	msgpack_pack_str_body(pk, s, strlen(s));
}

/* {"v": 1, "op": op, key: value...} with value packed by a callback. */
typedef void (*pack_value)(msgpack_packer *pk);
static msgpack_sbuffer request_with(const char *op, const char *key, pack_value value)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, key ? 4 : 2);
	pack_str(&pk, "v");
	msgpack_pack_int(&pk, 1);
	pack_str(&pk, "op");
	pack_str(&pk, op);
	if (key) {
		pack_str(&pk, "token_ids");
		msgpack_pack_array(&pk, 2);
		msgpack_pack_int(&pk, 1);
		msgpack_pack_int(&pk, 2);
		pack_str(&pk, key);
		value(&pk);
	}
	return sb;
}

static void ten(msgpack_packer *pk) { pack_str(pk, "ten"); }
static void garbage_image(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_bin(pk, 9);
	msgpack_pack_bin_body(pk, "not a png", 9);
}

static void expect_refusal(const char *endpoint, const void *bytes, size_t len, int frames,
			   const char *code, const char *needle)
{
	qw_reply r;
	if (!raw_exchange(endpoint, bytes, len, frames, &r, 10000))
		fail_msg("no reply to a request that should get \"%s\"", needle);
	assert_int_equal(r.type, QW_REPLY_ERROR);
	assert_string_equal(r.code, code);
	assert_contains(r.message, needle);
	qw_reply_free(&r);
}

/* Each kind of bad request gets an error reply naming what is wrong, while a request that
 * was running goes on to its end, token for token. */
static void test_bad_requests(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "300", "--max-request-bytes", "4M",
						 NULL}, NULL, true);
	int n, n_want;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	int32_t *want = fixture_ids("tiny-moe", "short.fp32.greedy_tokens", &n_want);
	qw_request r = token_request(ids, n, 3000, NULL, 0);
	qw_client a;
	open_client(&a, &d);
	qw_err err = {0};
	assert_int_equal(qw_client_send(&a, &r, &err), QW_OK);

	expect_refusal(d.endpoint, "\xc1\xc1\xc1", 3, 1, "bad_request", "not valid msgpack");
	expect_refusal(d.endpoint, "", 0, 0, "bad_request", "not a request");
	msgpack_sbuffer sb = request_with("explode", NULL, NULL);
	expect_refusal(d.endpoint, sb.data, sb.size, 1, "bad_request", "unknown op \"explode\"");
	expect_refusal(d.endpoint, sb.data, sb.size, 2, "bad_request", "one frame");
	msgpack_sbuffer_destroy(&sb);
	sb = request_with("submit", "max_tokens", ten);
	expect_refusal(d.endpoint, sb.data, sb.size, 1, "bad_request",
		       "\"max_tokens\" must be a number");
	msgpack_sbuffer_destroy(&sb);
	sb = request_with("submit", "images", garbage_image);
	expect_refusal(d.endpoint, sb.data, sb.size, 1, "bad_request", "image 1");
	msgpack_sbuffer_destroy(&sb);
	/* 2 MiB of text: past the 1 MiB a request may carry */
	size_t big = 2u << 20;
	char *text = malloc(big);
	memset(text, 'a', big);
	qw_request long_text = {.op = QW_OP_SUBMIT, .prompt = text, .prompt_len = big,
				.temperature = -1, .top_k = -1, .stream = true};
	char *buf;
	size_t len;
	assert_int_equal(qw_request_encode(&long_text, &buf, &len, &err), QW_OK);
	expect_refusal(d.endpoint, buf, len, 1, "too_large", "bytes of text");
	free(buf);
	/* text for a model without a tokenizer; a token outside the vocabulary */
	long_text.prompt_len = 5;
	assert_int_equal(qw_request_encode(&long_text, &buf, &len, &err), QW_OK);
	expect_refusal(d.endpoint, buf, len, 1, "bad_request", "no tokenizer");
	free(buf);
	int32_t outside[] = {1, 5000};
	qw_request ov = token_request(outside, 2, 4, NULL, 0);
	assert_int_equal(qw_request_encode(&ov, &buf, &len, &err), QW_OK);
	expect_refusal(d.endpoint, buf, len, 1, "bad_request", "outside the model's vocabulary");
	free(buf);
	/* past --max-request-bytes: ZeroMQ drops the connection before qwend sees it */
	qw_reply rep;
	char *huge = calloc(1, 5u << 20);
	assert_false(raw_exchange(d.endpoint, huge, 5u << 20, 1, &rep, 1000));
	free(huge);
	free(text);

	outcome o = {0};
	read_to_end(&a, &o);
	assert_string_equal(o.finish, "length");
	assert_int_equal(o.n_tokens, 3000);
	assert_memory_equal(o.tokens, want, (size_t)n_want * sizeof *want);
	qw_client_close(&a);
	/* the refusals are counted by code, apart from failures: eight bad requests and one
	 * too large above; the request that ran was served, none failed */
	json_t *s = qwend_status(&d);
	json_t *req = json_object_get(s, "requests"), *refused = json_object_get(req, "refused");
	assert_int_equal(json_integer_value(json_object_get(refused, "bad_request")), 8);
	assert_int_equal(json_integer_value(json_object_get(refused, "too_large")), 1);
	assert_int_equal(json_integer_value(json_object_get(refused, "busy")), 0);
	assert_int_equal(json_integer_value(json_object_get(req, "failed")), 0);
	assert_int_equal(json_integer_value(json_object_get(req, "served")), 1);
	json_decref(s);
	free(ids);
	free(want);
	qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// images off the loop

/* A one-colour PNG of w x h (fast: zlib level 1, one row repeated); free m.p. */
static membuf flat_png(int w, int h)
{
	size_t row = (size_t)w * 3 + 1;
	uint8_t *r = calloc(row, 1);
	for (size_t i = 1; i < row; i++)
		r[i] = (uint8_t)(i % 3 ? 90 : 200);
	size_t cap = (size_t)h * row / 100 + (1u << 20);
	uint8_t *out = malloc(cap + 64);
	memcpy(out, "\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
	for (int k = 0; k < 4; k++) {
		out[16 + k] = (uint8_t)((uint32_t)w >> (24 - 8 * k));
		out[20 + k] = (uint8_t)((uint32_t)h >> (24 - 8 * k));
	}
	memcpy(out + 24, "\x08\x02\0\0\0", 5);   /* 8-bit RGB */
	uint32_t crc = (uint32_t)crc32(0, out + 12, 17);
	for (int k = 0; k < 4; k++)
		out[29 + k] = (uint8_t)(crc >> (24 - 8 * k));
	z_stream z = {0};
	assert_int_equal(deflateInit(&z, 1), Z_OK);
	z.next_out = out + 41;
	z.avail_out = (uInt)(cap - 41);
	for (int y = 0; y < h; y++) {
		z.next_in = r;
		z.avail_in = (uInt)row;
		assert_true(deflate(&z, y == h - 1 ? Z_FINISH : Z_NO_FLUSH) >= 0);
	}
	uint32_t n = (uint32_t)z.total_out;
	deflateEnd(&z);
	for (int k = 0; k < 4; k++)
		out[33 + k] = (uint8_t)(n >> (24 - 8 * k));
	memcpy(out + 37, "IDAT", 4);
	crc = (uint32_t)crc32(0, out + 37, n + 4);
	size_t at = 41 + n;
	for (int k = 0; k < 4; k++)
		out[at + (size_t)k] = (uint8_t)(crc >> (24 - 8 * k));
	memcpy(out + at + 4, "\0\0\0\0IEND\xae\x42\x60\x82", 12);
	free(r);
	return (membuf){out, at + 16};
}

/* Seconds a status round trip takes; *decoding: images the pool holds. */
static double timed_status(qwend *d, json_int_t *decoding)
{
	double t0 = qw_seconds_now();
	json_t *s = qwend_status(d);
	double dt = qw_seconds_now() - t0;
	json_t *p = json_object_get(json_object_get(s, "requests"), "images_decoding");
	*decoding = json_is_integer(p) ? json_integer_value(p) : -1;
	json_decref(s);
	return dt;
}

/* Decoding and resizing a large image takes seconds: the pool's threads do it while the
 * loop answers status and streams another request on; and images past the token limits are
 * refused from their headers, before any is decoded (sixteen 6000 x 6000 PNGs, 6 MB, used
 * to hold the loop for half a minute before being refused). */
static void test_images_off_the_loop(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--max-model-len", "17000", "--image-threads",
						 "1", NULL}, NULL, true);
	membuf png = flat_png(6000, 6000);   /* 16384 image tokens, resized to 4096 x 4096 */
	int32_t pads[] = {998, 1000, 999};
	qw_item imgs[16];
	for (int i = 0; i < 16; i++)
		imgs[i] = (qw_item){QW_ITEM_IMAGE, (const char *)png.p, png.n};
	int32_t many_pads[48];
	for (int i = 0; i < 48; i++)
		many_pads[i] = pads[i % 3];

	/* sixteen of them: refused at once */
	qw_request sixteen = token_request(many_pads, 48, 4, imgs, 16);
	double t0 = qw_seconds_now();
	outcome o;
	run_request(d.endpoint, &sixteen, &o);
	double took = qw_seconds_now() - t0;
	assert_string_equal(o.code, "too_large");
	assert_contains(o.message, "image tokens (image 2 brings them to 32768)");
	outcome_free(&o);
	printf("# 16 images of 6000 x 6000 refused in %.3f s\n", took);
	assert_true(took < 1.0);

	/* one of them, sent by a client that leaves once it is being decoded, while another
	 * streams */
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	qw_request r = token_request(ids, n, 4000, NULL, 0);
	qw_client a, b;
	open_client(&a, &d);
	start_streaming(&a, &r);
	open_client(&b, &d);
	qw_request heavy = token_request(pads, 3, 4, imgs, 1);
	qw_err err = {0};
	assert_int_equal(qw_client_send(&b, &heavy, &err), QW_OK);
	double worst_status = 0, worst_gap = 0, last_chunk = qw_seconds_now(), began = qw_seconds_now();
	int seen_decoding = 0, chunks = 0;
	bool streamed_all = false;   /* a fast backend (a GPU) may finish all 4000 tokens first */
	json_int_t decoding = 0;
	while (qw_seconds_now() - began < 30 && worst_status < 0.5) {
		double dt = timed_status(&d, &decoding);
		assert_true(decoding >= 0);
		if (dt > worst_status)
			worst_status = dt;
		/* it is being decoded: leave.  Not at the first sight: the pool counts a job from
		 * its submission, and one that no thread has started yet is skipped once its
		 * request is gone (on a loaded machine the thread may start late) */
		if (decoding > 0 && ++seen_decoding == 3)
			qw_client_close(&b);
		while (!streamed_all) {
			qw_reply rep;
			bool got;
			assert_int_equal(qw_client_poll(&a, &rep, &got, &err), QW_OK);
			if (!got)
				break;
			streamed_all = rep.type == QW_REPLY_DONE;
			if (!streamed_all)
				assert_int_equal(rep.type, QW_REPLY_CHUNK);
			qw_reply_free(&rep);
			if (streamed_all)
				break;
			chunks++;
			if (seen_decoding > 0 && qw_seconds_now() - last_chunk > worst_gap)
				worst_gap = qw_seconds_now() - last_chunk;
			last_chunk = qw_seconds_now();
		}
		if (seen_decoding > 0 && decoding == 0)
			break;
		usleep(50000);
	}
	printf("# one 6000 x 6000 image decoded and resized in about %.2f s; meanwhile %d status "
	       "replies (the slowest in %.3f s) and %d chunks of another request (at most %.3f s "
	       "apart%s)\n", qw_seconds_now() - began, seen_decoding, worst_status, chunks, worst_gap,
	       streamed_all ? "; it finished meanwhile" : "");
	assert_true(worst_status < 0.5);
	assert_int_equal(decoding, 0);
	assert_true(seen_decoding >= 3);        /* the work took a while: the check means something */
	assert_true(worst_gap < 1.0);
	qwend_wait_for(&d, "requests", "cancelled", 1, 5);
	qw_client_close(&a);
	free(ids);
	free(png.p);
	qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// the end, and failures

/* SIGTERM: new requests are refused, the running one finishes, qwend exits 0 and removes
 * its socket.  With a short drain timeout the running one is failed instead. */
static void test_sigterm(void **state)
{
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	for (int k = 0; k < 2; k++) {
		qwend d;
		qwend_start(&d, tiny(), (const char *[]){"--kv-blocks", "300", "--drain-timeout",
							 k ? "0.2" : "30", NULL}, NULL, true);
		qw_request r = token_request(ids, n, k ? 4000 : 1500, NULL, 0);
		qw_client a, b;
		open_client(&a, &d);
		start_streaming(&a, &r);
		kill(d.pid, SIGTERM);
		qwend_wait_state(&d, "draining", 5);
		open_client(&b, &d);
		qw_reply rep;
		qw_err err = {0};
		assert_int_equal(qw_client_send(&b, &r, &err), QW_OK);
		expect_reply(&b, QW_REPLY_ERROR, &rep);
		assert_string_equal(rep.code, "not_ready");
		assert_contains(rep.message, "shutting down");
		qw_reply_free(&rep);
		outcome o = {0};
		read_to_end(&a, &o);
		if (k == 0) {
			assert_string_equal(o.finish, "length");
		} else {
			assert_string_equal(o.code, "not_ready");
			assert_contains(o.message, "did not finish in time");
		}
		qw_client_close(&a);
		qw_client_close(&b);
		qwend_stop(&d);   /* exits 0 without another signal, socket removed */
	}
	free(ids);
}

/* While the workers load, status says so and submit is "not ready"; the progress is known
 * from the start (its total the stage plan's, equal to what the workers load: the tied
 * embedding of tiny-dense's one stage counted once), only grows, comes with an estimate of
 * the time left, and a load of some seconds is logged.  The socket is there before the
 * model is read. */
static void test_loading(void **state)
{
	qwend d;
	qwend_start(&d, fixture("hf/tiny-dense/model"), NULL,
		    (const char *[]){"QWEND_TEST_LOAD_DELAY_MS=3000", NULL}, false);
	json_t *s = qwend_status(&d);
	assert_string_equal(json_string_value(json_object_get(s, "state")), "loading");
	json_decref(s);
	int32_t ids[] = {1, 2, 3};
	qw_request r = token_request(ids, 3, 2, NULL, 0);
	outcome o;
	run_request(d.endpoint, &r, &o);
	assert_string_equal(o.code, "not_ready");
	assert_contains(o.message, "loading: the weights ");
	outcome_free(&o);
	json_int_t total = -1, done = 0;
	bool midway = false;
	for (int i = 0; i < 400; i++) {
		s = qwend_status(&d);
		const json_t *load = json_object_get(s, "load");
		json_int_t t = json_integer_value(json_object_get(load, "bytes_total"));
		json_int_t now = json_integer_value(json_object_get(load, "bytes_done"));
		if (total < 0)
			total = t;
		assert_true(t > 0 && t == total);   /* known from the start */
		assert_true(now >= done && now <= total);
		done = now;
		if (now > 0 && now < total) {
			midway = true;
			assert_true(json_number_value(json_object_get(load, "eta_s")) > 0);
		}
		bool ready = !strcmp(json_string_value(json_object_get(s, "state")), "ready");
		if (ready) {
			json_int_t stages = 0;
			for (size_t k = 0; k < json_array_size(json_object_get(s, "stages")); k++)
				stages += json_integer_value(json_object_get(
					json_array_get(json_object_get(s, "stages"), k), "weight_bytes"));
			assert_int_equal(stages, total);   /* the workers loaded what was planned */
			assert_int_equal(done, total);
		}
		json_decref(s);
		if (ready)
			break;
		usleep(20000);
	}
	assert_true(midway);
	char *log = read_file(d.log, NULL);
	assert_contains(log, " I loading: the weights ");
	assert_contains(strstr(log, " I loading: the weights "), " s left\n");
	/* bound before the model was read */
	assert_non_null(strstr(log, " I listening on "));
	assert_true(strstr(log, " I listening on ") < strstr(log, " I model "));
	free(log);
	qwend_wait_state(&d, "ready", 30);
	run_request(d.endpoint, &r, &o);
	assert_string_equal(o.finish, "length");
	outcome_free(&o);
	qwend_stop(&d);
}

static pid_t stage_pid(qwend *d, int i)
{
	json_t *s = qwend_status(d);
	pid_t pid = (pid_t)json_integer_value(json_object_get(
		json_array_get(json_object_get(s, "stages"), (size_t)i), "pid"));
	json_decref(s);
	return pid;
}

/* With checking on, a bit flipped in a hand-over fails the request, loudly; the stage that
 * failed the step (the receiver) is started again alone, its sender keeps its worker. */
static void test_corrupted_handover(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--stages", "2", "--check-transport", "yes", NULL},
		    (const char *[]){"QWEND_TEST_CORRUPT_HANDOVER=2", NULL}, true);
	pid_t sender = stage_pid(&d, 0), receiver = stage_pid(&d, 1);
	int n;
	int32_t *ids = fixture_ids("tiny-moe", "short.input_ids", &n);
	qw_request r = token_request(ids, n, 8, NULL, 0);
	outcome o;
	run_request(d.endpoint, &r, &o);
	assert_string_equal(o.code, "internal");
	assert_contains(o.message, "checksum mismatch");
	assert_contains(o.message, "worker 1 ");
	outcome_free(&o);
	qwend_wait_state(&d, "ready", 30);
	assert_int_equal(stage_pid(&d, 0), sender);
	pid_t again = stage_pid(&d, 1);
	assert_true(again > 0 && again != receiver);
	free(ids);
	qwend_stop(&d);
}

// ---------------------------------------------------------------------------------------
// the socket, the config, the unit

static int free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof a;
	bind(s, (struct sockaddr *)&a, sizeof a);
	getsockname(s, (struct sockaddr *)&a, &len);
	close(s);
	return ntohs(a.sin_port);
}

/* One qwend a socket; sockets no file permissions guard (tcp, abstract) only with
 * allow-remote, and then the log says who can connect; tcp binds loopback unless told
 * otherwise. */
static void test_socket_rules(void **state)
{
	qwend d;
	qwend_start(&d, tiny(), NULL, NULL, true);
	char *log;
	int status = qwend_run_to_exit((const char *[]){"--model", tiny(), "--socket", d.endpoint,
						       NULL}, &log);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
	assert_contains(log, "another qwend serves");
	free(log);
	json_decref(qwend_status(&d));   /* the first one is untouched (status fails otherwise) */
	qwend_stop(&d);

	char ep[64], want[64];
	int port = free_port();
	snprintf(ep, sizeof ep, "tcp://*:%d", port);
	snprintf(want, sizeof want, "tcp://127.0.0.1:%d", port);
	const char *no_files[] = {ep, "ipc://@qwend-test-abstract"};
	for (int i = 0; i < 2; i++) {
		status = qwend_run_to_exit((const char *[]){"--model", tiny(), "--socket",
							    no_files[i], NULL}, &log);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
		assert_contains(log, "every user of this machine could submit requests");
		assert_contains(log, "set allow-remote yes");
		free(log);
	}
	qwend t;
	qwend_start_at(&t, tiny(), want, (const char *[]){"--socket", ep, "--allow-remote", "yes",
							  NULL}, NULL, true);
	json_t *s = qwend_status(&t);
	assert_string_equal(json_string_value(json_object_get(s, "endpoint")), want);
	json_decref(s);
	char *tlog = read_file(t.log, NULL);
	assert_contains(tlog, "which has no access control: every user of this machine may "
		       "submit requests");
	free(tlog);
	qwend_stop(&t);

	snprintf(ep, sizeof ep, "tcp://0.0.0.0:%d", port);
	status = qwend_run_to_exit((const char *[]){"--model", tiny(), "--socket", ep, NULL}, &log);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
	assert_contains(log, "would let other machines submit requests");
	assert_contains(log, "allow-remote");
	free(log);
	/* a setting that does not exist */
	status = qwend_run_to_exit((const char *[]){"--model", tiny(), "--kv-blokcs", "3", NULL},
				   &log);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 2);
	free(log);
}

/* What a new user gets wrong at start-up, each refused with what was expected and what to
 * do, each said once. */
static void test_start_up_errors(void **state)
{
	char *dir = scratch_new(), *log, sock[1100], conf[1100];
	snprintf(sock, sizeof sock, "ipc://%s/q.sock", dir);
	snprintf(conf, sizeof conf, "%s", fixture("hf/tiny-moe/model/config.json"));
	const struct {
		const char *args[6];
		int status;
		const char *msg;
	} cases[] = {
		/* no model: the demo is a choice, not a default */
		{{NULL}, 2, "qwend: no model to serve: set model in the config file or give --model "
			    "DIR (a model directory as HF's download makes it)\nHINT: --model demo "
			    "serves a tiny built-in model with random weights, to try qwend out\n"},
		{{"--model", "Qwen/Qwen3-VL-30B-A3B-Instruct"}, 1, "nothing is downloaded"},
		{{"--model", "Qwen/Qwen3-VL-30B-A3B-Instruct"}, 1,
		 " E HINT: download it first (hf download Qwen/Qwen3-VL-30B-A3B-Instruct"},
		{{"--model", conf}, 1, "config.json: a file, not a directory"},
		{{"--model", "demo", "--min-p", "0.1"}, 2, "qwend: unknown option '--min-p'\n"},
		{{"--model", "demo", "--temperature", "-1"}, 2,
		 "qwend: --temperature: -1 is outside [0, 100]\n"},
		{{"--model", "demo", "--device", "tpu"}, 2,
		 "qwend: --device: \"tpu\" is not one of auto|cpu|cuda\n"},
		{{"--model", "demo", "--stages"}, 2, "qwend: --stages needs a value\n"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const char *args[10] = {"--socket", sock};
		int n = 2;
		for (int k = 0; cases[i].args[k]; k++)
			args[n++] = cases[i].args[k];
		int status = qwend_run_to_exit(args, &log);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != cases[i].status)
			fail_msg("case %zu: exit %d, not %d:\n%s", i, WEXITSTATUS(status),
				 cases[i].status, log);
		assert_contains(log, cases[i].msg);
		assert_null(strstr(log, "unrecognized"));
		/* said once */
		const char *at = strstr(log, cases[i].msg);
		assert_null(strstr(at + 1, cases[i].msg));
		free(log);
	}
	/* device auto says what it chose (cpu where the driver lists no GPU) before the model
	 * fails on either backend (a tokenizer directory without tokenizer.json) */
	const char *args[] = {"--socket", sock, "--model", tiny(), "--tokenizer", dir, NULL};
	int status = qwend_run_to_exit(args, &log);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
	assert_contains(log, " I device auto: ");
	if (qw_devices_count_gpus(QW_NVIDIA_GPUS_DIR) == 0)
		assert_contains(log, " I device auto: cpu, as ");
	assert_contains(log, ": no tokenizer.json there");
	free(log);
	scratch_free(dir);
}

/* SIGHUP reloads the config file: runtime settings change, the others wait for a restart. */
static void test_sighup(void **state)
{
	char *dir = scratch_new();
	const char *conf = path_in(dir, "qwend.conf");
	char conf_path[1100];
	snprintf(conf_path, sizeof conf_path, "%s", conf);
	const char *first = "max-queue 5\nmax-seqs 16\nprefix-cache no\n";
	write_file(conf_path, first, strlen(first));
	qwend d;
	qwend_start(&d, tiny(), (const char *[]){"--config", conf_path, NULL}, NULL, true);
	json_t *s = qwend_status(&d);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "settings"),
							    "max-queue")), 5);
	assert_true(json_is_false(json_object_get(json_object_get(s, "prefix_cache"), "enabled")));
	json_decref(s);
	const char *second = "max-queue 7\nmax-seqs 8\nprefix-cache yes\n";
	write_file(conf_path, second, strlen(second));
	kill(d.pid, SIGHUP);
	qwend_wait_for(&d, "settings", "max-queue", 7, 5);
	assert_int_equal(qwend_status_int(&d, "settings", "max-seqs"), 16);
	s = qwend_status(&d);   /* the prefix cache is a runtime setting */
	assert_true(json_is_true(json_object_get(json_object_get(s, "prefix_cache"), "enabled")));
	json_decref(s);
	char *log = read_file(d.log, NULL);
	assert_contains(log, "SIGHUP: max-queue 7, was 5\n");
	assert_contains(log, "SIGHUP: max-seqs changes only with a restart\n");
	free(log);
	qwend_stop(&d);
	scratch_free(dir);
}

/* systemd-analyze verify, where it is installed, on the unit with this build's qwend. */
static void test_systemd_unit(void **state)
{
	verify_unit("systemd/qwend.service", "qwend");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cancel_and_disconnect),
		cmocka_unit_test(test_kv_exhaustion_and_busy),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_images_off_the_loop),
		cmocka_unit_test(test_sigterm),
		cmocka_unit_test(test_loading),
		cmocka_unit_test(test_corrupted_handover),
		cmocka_unit_test(test_socket_rules),
		cmocka_unit_test(test_start_up_errors),
		cmocka_unit_test(test_sighup),
		cmocka_unit_test(test_systemd_unit),
	};
	return cmocka_run_group_tests_name("qwend faults", tests, NULL, NULL);
}
