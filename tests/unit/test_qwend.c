/* test_qwend.c - the daemon serves what the model computes: a real qwend on the CPU
 * backend, talked to over its socket.
 *
 *   - the HF fixtures' greedy tokens, for text and image prompts, at 1 and 3 stages;
 *   - 16 clients at once (text and image chat prompts of mixed lengths, through a 3-stage
 *     pipeline) each get exactly the tokens and text they get alone;
 *   - qwenctl against the real daemon: submit with an image, status, bench, shutdown;
 *   - the README's quick start (cli/demo.py): it runs, and shows commands a shell takes;
 *   - tokenize / detokenize, the prompt's ids in accepted, and the thinking switch;
 *   - step memory reserved at load: reported per stage, images split over steps served
 *     from it, and on CUDA the GPU's free memory unchanged from ready on. */
#include "tests/unit/qwend_harness.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/client.h"
#include "daemon/image/image.h"
#include "loader/checkpoint.h"

/* Whether the daemon's tests run on the CUDA backend (QWEND_TEST_DEVICE=cuda). */
static bool on_cuda(void)
{
	const char *device = getenv("QWEND_TEST_DEVICE");
	return device && !strcmp(device, "cuda");
}

/* A fixture model's text and image cases: their ids, HF's greedy tokens (on the CUDA
 * backend, bf16, HF's own bf16 ones), and the image. */
typedef struct hf_cases {
	int32_t *ids_s, *ids_i, *want_s, *want_i;
	int n_short, n_image, n_want_s, n_want_i;
	membuf png;
	qw_item image;
} hf_cases;

static void hf_cases_load(hf_cases *c, const char *model)
{
	bool bf16 = on_cuda();
	c->ids_s = fixture_ids(model, "short.input_ids", &c->n_short);
	c->ids_i = fixture_ids(model, "image.input_ids", &c->n_image);
	c->want_s = fixture_ids(model, bf16 ? "short.bf16.greedy_tokens"
					    : "short.fp32.greedy_tokens", &c->n_want_s);
	c->want_i = fixture_ids(model, bf16 ? "image.bf16.greedy_tokens"
					    : "image.fp32.greedy_tokens", &c->n_want_i);
	c->png = fixture_png(model);
	c->image = (qw_item){QW_ITEM_IMAGE, (const char *)c->png.p, c->png.n};
}

static void hf_cases_free(hf_cases *c)
{
	free(c->png.p);
	free(c->ids_s);
	free(c->ids_i);
	free(c->want_s);
	free(c->want_i);
}

/* HF's greedy tokens through the daemon, for the text and the image case, at 1 and 3
 * stages; and the same tokens with every hand-over checksummed. */
static void test_fixture_tokens(void **state)
{
	static const char *const models[] = {"tiny-moe", "tiny-dense"};
	for (int m = 0; m < 2; m++) {
		char dir[256];
		snprintf(dir, sizeof dir, "hf/%s/model", models[m]);
		hf_cases c;
		hf_cases_load(&c, models[m]);
		const char *stages[] = {"1", "3", "3"};
		for (int k = 0; k < 3; k++) {
			const char *args[] = {"--stages", stages[k], "--kv-blocks", "64",
					      "--check-transport", k == 2 ? "yes" : "no", NULL};
			qwend d;
			qwend_start(&d, fixture(dir), args, NULL, true);
			qw_request rs = token_request(c.ids_s, c.n_short, c.n_want_s, NULL, 0);
			qw_request ri = token_request(c.ids_i, c.n_image, c.n_want_i, &c.image, 1);
			outcome os, oi;
			run_request(d.endpoint, &rs, &os);
			run_request(d.endpoint, &ri, &oi);
			char what[128];
			snprintf(what, sizeof what, "%s, %s stage%s%s, text", models[m], stages[k],
				 k ? "s" : "", k == 2 ? ", checked" : "");
			expect_tokens(&os, c.want_s, c.n_want_s, "HF", what);
			assert_string_equal(os.finish, "length");
			snprintf(what, sizeof what, "%s, %s stage%s, image", models[m], stages[k],
				 k ? "s" : "");
			expect_tokens(&oi, c.want_i, c.n_want_i, "HF", what);
			outcome_free(&os);
			outcome_free(&oi);
			qwend_stop(&d);
		}
		hf_cases_free(&c);
	}
}

/* A smooth image of w x h, as a PNG. */
static membuf gradient_png(int w, int h, int seed)
{
	qw_image img = {w, h, malloc((size_t)w * (size_t)h * 3)};
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++) {
			uint8_t *p = img.rgb + ((size_t)y * (size_t)w + (size_t)x) * 3;
			p[0] = (uint8_t)(x * 255 / w);
			p[1] = (uint8_t)(y * 255 / h);
			p[2] = (uint8_t)(seed * 40);
		}
	membuf m = encode_png(&img, PNG_COLOR_TYPE_RGB);
	free(img.rgb);
	return m;
}

#define CLIENTS 16

/* Each of reqs alone, then all at once; none may fail. */
static void alone_and_together(const char *endpoint, const qw_request *reqs, int n,
			       outcome *alone, outcome *together)
{
	for (int i = 0; i < n; i++)
		run_request(endpoint, &reqs[i], &alone[i]);
	run_concurrently(endpoint, reqs, n, together);
	for (int i = 0; i < n; i++)
		if (alone[i].code[0] || together[i].code[0])
			fail_msg("request %d: %s %s", i, alone[i].message, together[i].message);
}

/* 16 clients at once through a 3-stage pipeline: each gets what it gets alone. */
static void test_concurrent_clients(void **state)
{
	use_demo_cache();
	const char *args[] = {"--stages", "3", "--kv-blocks", "1024", NULL};
	qwend d;
	qwend_start(&d, "demo", args, NULL, true);
	qw_request reqs[CLIENTS];
	qw_req_message msgs[CLIENTS];
	qw_item items[CLIENTS][2];
	char texts[CLIENTS][512];
	membuf pngs[CLIENTS] = {{0}};
	for (int i = 0; i < CLIENTS; i++) {
		int at = 0;
		for (int k = 0; k <= i % 5; k++)
			at += snprintf(texts[i] + at, sizeof texts[i] - (size_t)at,
				       "Tell me about item %d, part %d. ", i, k);
		int n = 0;
		if (i % 3 == 0) {
			pngs[i] = gradient_png(32 + 16 * (i % 4), 48 + 16 * (i % 3), i);
			items[i][n++] = (qw_item){QW_ITEM_IMAGE, (const char *)pngs[i].p, pngs[i].n};
		}
		items[i][n++] = (qw_item){QW_ITEM_TEXT, texts[i], strlen(texts[i])};
		msgs[i] = (qw_req_message){"user", 4, items[i], n, NULL, 0, NULL, 0};
		reqs[i] = (qw_request){.op = QW_OP_SUBMIT, .messages = &msgs[i], .n_messages = 1,
				       .max_tokens = 6 + i % 7, .greedy = true, .temperature = -1,
				       .top_k = -1, .stream = true};
	}
	outcome alone[CLIENTS], together[CLIENTS];
	alone_and_together(d.endpoint, reqs, CLIENTS, alone, together);
	for (int i = 0; i < CLIENTS; i++) {
		assert_int_equal(alone[i].n_tokens, 6 + i % 7);
		assert_int_equal(together[i].n_tokens, alone[i].n_tokens);
		if (memcmp(alone[i].tokens, together[i].tokens,
			   (size_t)alone[i].n_tokens * sizeof(int32_t)) != 0)
			fail_msg("client %d (%s an image): its tokens changed with 15 others beside it", i,
				 i % 3 == 0 ? "with" : "without");
		assert_string_equal(alone[i].text, together[i].text);
		assert_string_equal(together[i].finish, "length");
	}
	json_t *s = qwend_status(&d);
	json_t *req = json_object_get(s, "requests");
	assert_int_equal(json_integer_value(json_object_get(req, "served")), 2 * CLIENTS);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "kv"),
							    "blocks_used")), 0);
	json_decref(s);
	for (int i = 0; i < CLIENTS; i++) {
		outcome_free(&alone[i]);
		outcome_free(&together[i]);
		free(pngs[i].p);
	}
	qwend_stop(&d);
}

/* Each stage's weight_bytes in the daemon's status (the workers' own count once ready). */
static void stage_weight_bytes(qwend *d, json_int_t *out, int n)
{
	json_t *s = qwend_status(d), *stages = json_object_get(s, "stages");
	assert_int_equal(json_array_size(stages), n);
	for (int i = 0; i < n; i++)
		out[i] = json_integer_value(json_object_get(json_array_get(stages, i), "weight_bytes"));
	json_decref(s);
}

/* --model synthetic:CONFIG.json serves the same model qwen-ckpt export-reduced writes for
 * that config (seed 0): the same tokens, with no checkpoint; under an FP8 config too (FP8
 * weights and block scales made by the backend), where each stage's weights weigh what the
 * FP8 checkpoint's tensors and scales weigh, one byte a quantized value. */
static void test_synthetic(void **state)
{
	for (int fp8 = 0; fp8 < 2; fp8++) {
		char *dir = scratch_new();
		char *out;
		const char *cfg = fixture("hf/tiny-moe/model/config.json");
		int rc = run_capture(&out, "%s export-reduced --config %s --out %s %s",
				     program("qwen-ckpt"), cfg, dir, fp8 ? "--quantize fp8" : "");
		if (rc != 0)
			fail_msg("%s", out);
		free(out);
		int32_t ids[] = {1, 2, 3, 4, 5, 6, 7, 8};
		qw_request r = token_request(ids, 8, 12, NULL, 0);
		outcome got[2];
		json_int_t bytes[2][2];
		char synthetic[1200], model[1100];
		snprintf(model, sizeof model, "%s", dir);
		snprintf(synthetic, sizeof synthetic, "synthetic:%s/config.json", dir);
		const char *models[] = {model, synthetic};
		for (int k = 0; k < 2; k++) {
			qwend d;
			qwend_start(&d, models[k], (const char *[]){"--stages", "2", "--kv-blocks",
								    "64", NULL}, NULL, true);
			run_request(d.endpoint, &r, &got[k]);
			assert_string_equal(got[k].finish, "length");
			stage_weight_bytes(&d, bytes[k], 2);
			/* the status says the weights are FP8, and qwenctl shows it */
			json_t *st = qwend_status(&d);
			json_t *q = json_object_get(json_object_get(st, "model"), "quantization");
			assert_true(fp8 ? json_is_object(q) : q == NULL);
			if (fp8)
				assert_string_equal(json_string_value(json_object_get(q, "method")), "fp8");
			json_decref(st);
			rc = run_capture(&out, "%s --socket %s status", program("qwenctl"), d.endpoint);
			assert_int_equal(rc, 0);
			if (fp8)
				assert_contains(out, "FP8 weights (128 x 128 blocks)");
			else
				assert_null(strstr(out, "FP8"));
			free(out);
			qwend_stop(&d);
		}
		assert_int_equal(got[0].n_tokens, 12);
		assert_int_equal(got[1].n_tokens, 12);
		assert_memory_equal(got[0].tokens, got[1].tokens, 12 * sizeof(int32_t));
		/* the checkpoint's stages hold every tensor of its files once */
		qw_checkpoint *ck;
		qw_err err = {0};
		assert_int_equal(qw_ckpt_open(dir, &ck, &err), QW_OK);
		uint64_t stored = 0, fp8_values = 0;
		for (size_t i = 0; i < ck->n_tensors; i++) {
			stored += ck->tensors[i]->nbytes;
			if (ck->tensors[i]->dtype == QW_DT_F8_E4M3)
				fp8_values += ck->tensors[i]->numel;
		}
		qw_ckpt_close(ck);
		assert_true(fp8 ? fp8_values > 0 : fp8_values == 0);
		assert_int_equal(bytes[0][0] + bytes[0][1], stored);
		for (int s = 0; s < 2; s++)
			assert_int_equal(bytes[1][s], bytes[0][s]);
		outcome_free(&got[0]);
		outcome_free(&got[1]);
		scratch_free(dir);
	}
}

/* One request, its first reply. */
static void exchange(const char *endpoint, const qw_request *r, qw_reply *rep)
{
	qw_client c;
	qw_err err = {0};
	if (qw_client_open(&c, NULL, endpoint, 10000, &err) != QW_OK ||
	    qw_client_call(&c, r, rep, &err) != QW_OK)
		fail_msg("%s", err.msg);
	qw_client_close(&c);
}

/* tokenize gives the ids of the rendered chat (as qwen-tok renders and encodes it), with
 * the thinking switch and without the generation prompt; a submit's accepted carries the
 * same ids when asked; detokenize gives the text back; with thinking off the answer has no
 * reasoning. */
static void test_tokenize(void **state)
{
	use_demo_cache();
	qwend d;
	/* served as a Thinking model: its prompts open <think> */
	qwend_start(&d, "demo", (const char *[]){"--stages", "1", "--thinking", "yes", NULL}, NULL,
		    true);
	json_t *s = qwend_status(&d);
	char tok_dir[1100];
	snprintf(tok_dir, sizeof tok_dir, "%s",
		 json_string_value(json_object_get(json_object_get(s, "model"), "path")));
	json_decref(s);
	const char *conv = "[{\"role\": \"user\", \"content\": \"Hello there\"}]";
	write_file(path_in(d.dir, "m.json"), conv, strlen(conv));
	qw_item item = {QW_ITEM_TEXT, "Hello there", 11};
	qw_req_message msg = {"user", 4, &item, 1, NULL, 0, NULL, 0};
	const char *flags[] = {"--thinking", "--thinking --no-thinking",
			       "--thinking --no-generation-prompt"};
	qw_reply first;
	for (int k = 0; k < 3; k++) {
		qw_request r = {.op = QW_OP_TOKENIZE, .messages = &msg, .n_messages = 1,
				.thinking = k == 1 ? QW_THINKING_OFF : QW_THINKING_DEFAULT,
				.no_generation_prompt = k == 2};
		qw_reply rep;
		exchange(d.endpoint, &r, &rep);
		if (rep.type != QW_REPLY_TOKENS)
			fail_msg("tokenize answered %d: %s", rep.type, rep.message ? rep.message : "");
		char *want;
		assert_int_equal(run_capture(&want, "%s chat %s %s | %s encode --tokenizer %s",
					     program("qwen-tok"), flags[k], path_in(d.dir, "m.json"),
					     program("qwen-tok"), tok_dir), 0);
		char got[4096] = "";
		for (int i = 0; i < rep.n_token_ids; i++)
			snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", i ? " " : "",
				 rep.token_ids[i]);
		want[strcspn(want, "\n")] = '\0';
		assert_string_equal(got, want);
		free(want);
		if (k == 0)
			first = rep;
		else
			qw_reply_free(&rep);
	}
	/* the submit's prompt is the tokenize's */
	qw_request sub = {.op = QW_OP_SUBMIT, .messages = &msg, .n_messages = 1, .max_tokens = 2,
			  .greedy = true, .temperature = -1, .top_k = -1, .stream = true,
			  .prompt_ids = true};
	qw_reply acc;
	exchange(d.endpoint, &sub, &acc);
	assert_int_equal(acc.type, QW_REPLY_ACCEPTED);
	assert_int_equal(acc.n_token_ids, first.n_token_ids);
	assert_memory_equal(acc.token_ids, first.token_ids, sizeof(int32_t) * first.n_token_ids);
	qw_reply_free(&acc);
	/* and back to text */
	qw_request de = {.op = QW_OP_DETOKENIZE, .token_ids = (int32_t *)first.token_ids,
			 .n_token_ids = first.n_token_ids};
	qw_reply text;
	exchange(d.endpoint, &de, &text);
	assert_int_equal(text.type, QW_REPLY_TOKENS);
	assert_string_equal(text.text, "<|im_start|>user\nHello there<|im_end|>\n"
				       "<|im_start|>assistant\n<think>\n");
	qw_reply_free(&text);
	qw_reply_free(&first);
	/* thinking off: everything is answer */
	outcome o[2];
	for (int k = 0; k < 2; k++) {
		sub.prompt_ids = false;
		sub.max_tokens = 12;
		sub.thinking = k ? QW_THINKING_OFF : QW_THINKING_DEFAULT;
		run_request(d.endpoint, &sub, &o[k]);
		assert_string_equal(o[k].finish, "length");
	}
	assert_true(strlen(o[0].reasoning) > 0);   /* the demo model thinks, never closing */
	assert_string_equal(o[1].reasoning, "");
	assert_true(strlen(o[1].text) > 0);
	outcome_free(&o[0]);
	outcome_free(&o[1]);
	qwend_stop(&d);
}

/* The README's quick start (`scons demo` runs cli/demo.py): it succeeds, each command it
 * shows is one a shell takes as run (quoted), and the answer ends its line before
 * qwenctl's statistics line. */
static void test_quick_start(void **state)
{
	use_demo_cache();
	char *out, bin[4096];
	snprintf(bin, sizeof bin, "%s", program("qwend"));
	*strrchr(bin, '/') = '\0';
	int rc = run_capture(&out, "python3 %s --bin %s", fixture("../../cli/demo.py"), bin);
	if (rc != 0)
		fail_msg("the demo exited %d:\n%s", rc, out);
	assert_contains(out, " submit 'Describe this picture.' --image ");
	assert_contains(out, " -H 'Content-Type: application/json' -d '{\"model\": \"demo-v1\"");
	assert_contains(out, " --port 0 &\n");
	assert_contains(out, "\n# request 1: prompt ");
	assert_contains(out, "\"finish_reason\":\"length\"");
	assert_contains(out, " I exiting (0)\n");
	free(out);
}

/* qwenctl, the real client, against the real daemon. */
static void test_qwenctl(void **state)
{
	use_demo_cache();
	qwend d;
	qwend_start(&d, "demo", (const char *[]){"--stages", "2", NULL}, NULL, true);
	membuf png = gradient_png(64, 40, 1);
	const char *image = path_in(d.dir, "picture.png");
	write_file(image, png.p, png.n);
	free(png.p);
	char *out;
	const char *ctl = program("qwenctl");
	/* (the braces keep run_capture's 2>&1 from catching the stats line) */
	int rc = run_capture(&out, "{ %s --socket %s submit 'What is in the picture?' --image %s "
			     "--max-tokens 8 --seed 5 --json 2>/dev/null; }", ctl, d.endpoint,
			     image);
	if (rc != 0)
		fail_msg("qwenctl submit exited %d:\n%s", rc, out);
	json_t *j = json_loads(out, 0, NULL);
	if (!j)
		fail_msg("not JSON:\n%s", out);
	assert_int_equal(json_array_size(json_object_get(j, "token_ids")), 8);
	assert_string_equal(json_string_value(json_object_get(j, "finish_reason")), "length");
	/* the daemon logs the request's line at info: the figures qwenctl got */
	char *log = read_file(d.log, NULL), line[160];   /* (the log is read again below) */
	snprintf(line, sizeof line, " I request %lld: prompt %lld tokens, completion 8 tokens, TTFT ",
		 (long long)json_integer_value(json_object_get(j, "id")),
		 (long long)json_integer_value(json_object_get(json_object_get(j, "usage"),
							       "prompt_tokens")));
	assert_contains(log, line);
	assert_contains(log, " tokens/s, finish length\n");
	free(log);
	assert_true(json_integer_value(json_object_get(json_object_get(j, "usage"),
						       "prompt_tokens")) > 64);   /* the image */
	/* the same seed gives the same text, streamed, with a line feed after it */
	const char *text = json_string_value(json_object_get(j, "text"));
	char *again, want[4096];
	run_capture(&again, "{ %s --socket %s submit 'What is in the picture?' --image %s "
		    "--max-tokens 8 --seed 5 2>/dev/null; }", ctl, d.endpoint, image);
	snprintf(want, sizeof want, "%s\n", text);
	assert_string_equal(again, want);
	json_decref(j);
	free(again);
	free(out);

	rc = run_capture(&out, "%s --socket %s status", ctl, d.endpoint);
	assert_int_equal(rc, 0);
	assert_contains(out, "ready");
	assert_contains(out, "stage 1");
	/* the demo says what it is, in the status and in the log */
	assert_contains(out, " [the demo: random weights]");
	free(out);
	json_t *st = qwend_status(&d);
	assert_true(json_is_true(json_object_get(json_object_get(st, "model"), "demo")));
	json_decref(st);
	log = read_file(d.log, NULL);
	assert_contains(log, " W serving the demo model: a tiny Qwen3-VL with random weights");
	free(log);

	rc = run_capture(&out, "{ %s --socket %s bench --concurrency 3 --requests 6 "
			 "--prompt-tokens 20 --max-tokens 4 --json 2>/dev/null; }", ctl, d.endpoint);
	if (rc != 0)
		fail_msg("qwenctl bench exited %d:\n%s", rc, out);
	j = json_loads(out, 0, NULL);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "completed")), 6);
	json_decref(j);
	free(out);

	rc = run_capture(&out, "%s --socket %s shutdown", ctl, d.endpoint);
	assert_int_equal(rc, 0);
	assert_contains(out, "shutting down");
	free(out);
	int status = qwend_wait_exit(&d, 30);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	scratch_free(d.dir);
}

/* The GPU's free memory as each of n stages reports it (0 on the CPU backend, where there is
 * none), once every stage has been idle since the last change: an idle worker looks again
 * every 0.5 s, and stages sharing a GPU each see the others' allocations. */
static void stages_free(qwend *d, bool cuda, json_int_t *out, int n)
{
	if (cuda)
		usleep(1500 * 1000);
	json_t *s = qwend_status(d);
	json_t *stages = json_object_get(s, "stages");
	for (int i = 0; i < n; i++) {
		json_t *f = json_object_get(json_array_get(stages, (size_t)i), "device_free_bytes");
		assert_true(cuda ? f != NULL : f == NULL);
		out[i] = json_integer_value(f);
	}
	json_decref(s);
}

/* The free memory of n stages now equals what it was (nothing allocated since). */
static void free_unchanged(qwend *d, bool cuda, const json_int_t *before, int n)
{
	json_int_t now[8];
	assert_true(n <= 8);
	stages_free(d, cuda, now, n);
	for (int i = 0; i < n; i++)
		if (now[i] != before[i])
			fail_msg("stage %d: the GPU had %lld bytes free at ready, %lld after the "
				 "requests", i, (long long)before[i], (long long)now[i]);
}

/* Step memory is reserved at load and nothing grows once ready (issue 17): every stage
 * reports what it reserved for steps, stage 0 more (its vision tower and the features of
 * images split across steps); four image requests and a text one at once, in steps of 16
 * tokens (so each image is split over steps), get HF's tokens; and on the CUDA backend
 * (QWEND_TEST_DEVICE=cuda) the GPU's free memory each stage reports stays what it was at
 * ready across them (step graphs off: with them on, recordings take from memory kept free
 * for them, which tests/gpu/test_cuda_reserve holds). */
static void test_step_memory(void **state)
{
	bool cuda = on_cuda();
	hf_cases c;
	hf_cases_load(&c, "tiny-moe");
	const char *args[] = {"--stages", "3", "--kv-blocks", "256", "--max-batch-tokens", "16",
			      "--cuda-graphs", "no", NULL};
	qwend d;
	qwend_start(&d, fixture("hf/tiny-moe/model"), args, NULL, true);
	json_int_t free_at_ready[3];
	stages_free(&d, cuda, free_at_ready, 3);
	json_t *s = qwend_status(&d);
	json_int_t step[3];
	for (size_t i = 0; i < 3; i++) {
		step[i] = json_integer_value(json_object_get(
			json_array_get(json_object_get(s, "stages"), i), "step_bytes"));
		assert_true(step[i] > 0);
	}
	assert_true(step[0] > step[1]);   /* the vision tower and its image store */
	json_decref(s);
	qw_request reqs[5];
	for (int i = 0; i < 4; i++)
		reqs[i] = token_request(c.ids_i, c.n_image, c.n_want_i, &c.image, 1);
	reqs[4] = token_request(c.ids_s, c.n_short, c.n_want_s, NULL, 0);
	assert_true(c.n_image > 3 * 16);   /* the image's tokens span steps */
	outcome out[5];
	run_concurrently(d.endpoint, reqs, 5, out);
	for (int i = 0; i < 5; i++) {
		bool img = i < 4;
		expect_tokens(&out[i], img ? c.want_i : c.want_s, img ? c.n_want_i : c.n_want_s,
			      "HF", img ? "an image in steps of 16 tokens" : "text beside them");
		outcome_free(&out[i]);
	}
	free_unchanged(&d, cuda, free_at_ready, 3);
	qwend_stop(&d);
	hf_cases_free(&c);
}

/* The first request: a Qwen3-MoE checkpoint in the hub's per-expert layout (a
 * reduced Qwen3-30B-A3B) with the KV cache sized at kv-memory 0.95 of what is left, serving
 * requests of the largest batch shape (8 sequences of 64-token prompts in steps of 64 tokens,
 * then decoding together) at once: each gets the tokens it gets alone, and on CUDA the
 * GPU's free memory stays what it was at ready (whatever the experts' re-layout takes is
 * taken before the cache is sized). */
static void test_per_expert_at_kv_memory_95(void **state)
{
	char *dir = scratch_new(), *out;
	int rc = run_capture(&out, "%s export-reduced --config %s --out %s --num-layers 2 "
			     "--override-vocab 1024 --override-hidden 128 --override-heads 4 "
			     "--override-kv-heads 2 --override-head-dim 32 --override-num-experts 8 "
			     "--override-top-k 2 --override-moe-intermediate 48",
			     program("qwen-ckpt"), fixture("configs/Qwen3-30B-A3B.json"), dir);
	if (rc != 0)
		fail_msg("%s", out);
	free(out);
	bool cuda = on_cuda();
	qwend d;
	qwend_start(&d, dir, (const char *[]){"--stages", "2", "--kv-memory", "0.95",
					      "--max-batch-tokens", "64", "--max-seqs", "8",
					      "--cuda-graphs", "no", NULL}, NULL, true);
	json_int_t free_at_ready[2];
	stages_free(&d, cuda, free_at_ready, 2);
	enum { N = 8, PROMPT = 64, NEW = 6 };
	static int32_t ids[N][PROMPT];
	qw_request reqs[N];
	for (int i = 0; i < N; i++) {
		for (int t = 0; t < PROMPT; t++)
			ids[i][t] = (int32_t)((i * 131 + t * 17 + 5) % 1000);
		reqs[i] = token_request(ids[i], PROMPT, NEW, NULL, 0);
	}
	outcome alone[N], together[N];
	alone_and_together(d.endpoint, reqs, N, alone, together);
	for (int i = 0; i < N; i++) {
		expect_tokens(&together[i], alone[i].tokens, alone[i].n_tokens, "its own",
			      "eight at once");
		assert_int_equal(together[i].n_tokens, NEW);
		outcome_free(&alone[i]);
		outcome_free(&together[i]);
	}
	free_unchanged(&d, cuda, free_at_ready, 2);
	qwend_stop(&d);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixture_tokens),
		cmocka_unit_test(test_concurrent_clients),
		cmocka_unit_test(test_synthetic),
		cmocka_unit_test(test_qwenctl),
		cmocka_unit_test(test_quick_start),
		cmocka_unit_test(test_tokenize),
		cmocka_unit_test(test_step_memory),
		cmocka_unit_test(test_per_expert_at_kv_memory_95),
	};
	return cmocka_run_group_tests_name("qwend", tests, NULL, NULL);
}
