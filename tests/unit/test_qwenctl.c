/* test_qwenctl.c - build/bin/qwenctl end to end against a scripted fake daemon
 * (fake_qwend.h): what each flag puts in the request (a conversation from --messages
 * too), the streamed answer on its own line and --thinking, --json, the statistics line,
 * status summaries, cancel and shutdown, bench, Ctrl-C, files checked before anything is
 * sent, each usage error said once, a socket given as a bare path, and every exit status
 * (0, 1 error reply, 2 usage, 3 unreachable, 130 interrupted). */
#include "tests/unit/helpers.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/unit/fake_qwend.h"

/* Runs qwenctl --socket (the fake's) ARGS with stdin from in (or nothing); *out gets stdout,
 * *err stderr.  Returns the exit status. */
static int ctl(const char *dir, const char *in, char **out, char **err, const char *args)
{
	int rc = run_capture(out, "(%s --socket %s %s <%s 2>%s/stderr)", program("qwenctl"),
			     fake_endpoint(dir), args, in ? in : "/dev/null", dir);
	*err = read_file(path_in(dir, "stderr"), NULL);
	return rc;
}

static json_t *parse_json(const char *text)
{
	json_error_t jerr;
	json_t *o = json_loads(text, 0, &jerr);
	if (!o)
		fail_msg("not one JSON value (%s):\n%s", jerr.text, text);
	return o;
}

static double jnum(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	if (!json_is_number(v))
		fail_msg("no number '%s'", key);
	return json_number_value(v);
}

static void expect_text(const qw_item *it, const char *text)
{
	assert_int_equal(it->kind, QW_ITEM_TEXT);
	assert_int_equal(it->len, strlen(text));
	assert_memory_equal(it->data, text, it->len);
}

// ---------------------------------------------------------------------------------------
// submit

static const int32_t ids_hello[] = {9707}, ids_world[] = {11, 1879, 0};

/* accepted, two reasoning chunks, two answer chunks, done */
static bool answer_hello(fake *f, const qw_request *r)
{
	uint64_t id = f->next_id++;
	fake_accepted(f, id);
	fake_chunk(f, id, "", "Let me think.", NULL, 0);
	fake_chunk(f, id, NULL, " More.", NULL, 0);
	fake_chunk(f, id, "Hello", NULL, ids_hello, 1);
	fake_chunk(f, id, ", world!", NULL, ids_world, 3);
	fake_done(f, id, "stop", 12, 4, 45.5, 30.25);
	return true;
}

static void test_submit_chat(void **state)
{
	char *dir = scratch_new(), *out, *err;
	write_file(path_in(dir, "a.png"), "\x89PNG\r\n\x1a\n-one", 12);
	write_file(path_in(dir, "b.jpg"), "\xff\xd8\xff-two-jpeg", 13);
	pid_t pid = fake_start(dir, answer_hello, 1, NULL);
	char args[8192];
	snprintf(args, sizeof args, "submit 'Say hello' --system 'Be brief.' --image %s -i %s "
		 "--max-tokens 64 --temperature 0.5 --top-p 0.9 --top-k 20 --seed 42 --stop END "
		 "--stop '</s>' --min-p 0.05 --repetition-penalty 1.1 --frequency-penalty -0.5 "
		 "--presence-penalty 2", path_in(dir, "a.png"), path_in(dir, "b.jpg"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 0);
	assert_int_equal(fake_end(pid), 0);
	/* the answer alone on stdout, ending its line (so the statistics on stderr start on
	 * one of their own), the reasoning hidden */
	assert_string_equal(out, "Hello, world!\n");
	assert_contains(err, "# request 7: prompt 12 tokens, completion 4 tokens, TTFT 45.5 ms, "
			"30.2 tokens/s, finish stop");
	qw_request r;
	fake_request(dir, 0, &r);
	assert_int_equal(r.op, QW_OP_SUBMIT);
	assert_int_equal(r.n_messages, 2);
	assert_memory_equal(r.messages[0].role, "system", 6);
	assert_int_equal(r.messages[0].n_items, 1);
	expect_text(&r.messages[0].items[0], "Be brief.");
	assert_memory_equal(r.messages[1].role, "user", 4);
	assert_int_equal(r.messages[1].n_items, 3);
	assert_int_equal(r.messages[1].items[0].kind, QW_ITEM_IMAGE);
	assert_int_equal(r.messages[1].items[0].len, 12);
	assert_memory_equal(r.messages[1].items[0].data, "\x89PNG\r\n\x1a\n-one", 12);
	assert_int_equal(r.messages[1].items[1].kind, QW_ITEM_IMAGE);
	assert_memory_equal(r.messages[1].items[1].data, "\xff\xd8\xff-two-jpeg", 13);
	expect_text(&r.messages[1].items[2], "Say hello");
	assert_null(r.prompt);
	assert_null(r.token_ids);
	assert_int_equal(r.n_images, 0);
	assert_int_equal(r.max_tokens, 64);
	assert_true(r.temperature == 0.5 && r.top_p == 0.9);
	assert_int_equal(r.top_k, 20);
	assert_true(r.has_seed && r.seed == 42);
	assert_true(r.min_p == 0.05 && r.repetition_penalty == 1.1 && r.frequency_penalty == -0.5 &&
		    r.presence_penalty == 2);
	assert_false(r.logprobs);
	assert_int_equal(r.n_stop, 2);
	assert_memory_equal(r.stop[0], "END", 3);
	assert_memory_equal(r.stop[1], "</s>", 4);
	assert_true(r.stream);
	assert_false(r.greedy);
	assert_false(r.ignore_eos);
	qw_request_free(&r);
	free(out);
	free(err);
	scratch_free(dir);
}

static void test_submit_thinking_and_json(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_hello, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit --thinking hi"), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_string_equal(out, "<think>\nLet me think. More.\n</think>\nHello, world!\n");
	qw_request r;
	fake_request(dir, 0, &r);
	/* the defaults: the daemon's sampling, streaming */
	assert_int_equal(r.n_messages, 1);
	assert_int_equal(r.messages[0].n_items, 1);
	expect_text(&r.messages[0].items[0], "hi");
	assert_true(r.max_tokens == 0 && r.temperature < 0 && r.top_p == 0 && r.top_k < 0);
	assert_false(r.has_seed);
	assert_true(r.stream);
	assert_int_equal(r.n_stop, 0);
	qw_request_free(&r);
	free(out);
	free(err);

	/* --json: exactly one object on stdout, reasoning kept apart */
	pid = fake_start(dir, answer_hello, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit --json --no-stream -g --ignore-eos "
			     "hi"), 0);
	assert_int_equal(fake_end(pid), 0);
	json_t *o = parse_json(out);
	assert_int_equal(jnum(o, "id"), 7);
	assert_string_equal(json_string_value(json_object_get(o, "text")), "Hello, world!");
	assert_string_equal(json_string_value(json_object_get(o, "reasoning")),
			    "Let me think. More.");
	assert_string_equal(json_string_value(json_object_get(o, "finish_reason")), "stop");
	json_t *ids = json_object_get(o, "token_ids");
	assert_int_equal(json_array_size(ids), 4);
	assert_int_equal(json_integer_value(json_array_get(ids, 0)), 9707);
	assert_int_equal(json_integer_value(json_array_get(ids, 2)), 1879);
	json_t *usage = json_object_get(o, "usage");
	assert_int_equal(jnum(usage, "prompt_tokens"), 12);
	assert_int_equal(jnum(usage, "completion_tokens"), 4);
	assert_true(jnum(usage, "ttft_ms") == 45.5 && jnum(usage, "tokens_per_s") == 30.25);
	json_decref(o);
	fake_request(dir, 0, &r);
	assert_false(r.stream);
	assert_true(r.greedy && r.ignore_eos);
	qw_request_free(&r);
	free(out);
	free(err);
	scratch_free(dir);
}

/* two tokens with their log-probabilities: the first with two top ones (the second cut),
 * the second with none */
static bool answer_logprobs(fake *f, const qw_request *r)
{
	static const int32_t ids[] = {9707, 11};
	static const qw_reply_top top[] = {{9707, -0.25, "Hello", 5}, {21, -INFINITY, NULL, 0}};
	static const qw_reply_logprob lp[] = {{-0.25, "Hello", 5, top, 2}, {-1.5, ",", 1, NULL, 0}};
	fake_accepted(f, 4);
	fake_reply(f, &(qw_reply){.type = QW_REPLY_CHUNK, .request = 4, .text = "Hello,",
				  .text_len = 6, .token_ids = ids, .n_token_ids = 2, .logprobs = lp});
	fake_done(f, 4, "length", 3, 2, 1.0, 2.0);
	return true;
}

static void test_submit_logprobs(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_logprobs, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit --json --logprobs 2 hi"), 0);
	assert_int_equal(fake_end(pid), 0);
	json_t *o = parse_json(out);
	json_t *lp = json_object_get(o, "logprobs");
	assert_int_equal(json_array_size(lp), 2);
	json_t *t0 = json_array_get(lp, 0), *t1 = json_array_get(lp, 1);
	assert_int_equal(jnum(t0, "id"), 9707);
	assert_true(jnum(t0, "logprob") == -0.25 && jnum(t1, "logprob") == -1.5);
	json_t *top = json_object_get(t0, "top");
	assert_int_equal(json_array_size(top), 2);
	assert_int_equal(jnum(json_array_get(top, 1), "id"), 21);
	assert_true(json_is_null(json_object_get(json_array_get(top, 1), "logprob")));
	assert_int_equal(json_array_size(json_object_get(t1, "top")), 0);
	json_decref(o);
	qw_request r;
	fake_request(dir, 0, &r);
	assert_true(r.logprobs);
	assert_int_equal(r.top_logprobs, 2);
	qw_request_free(&r);
	free(out);
	free(err);
	scratch_free(dir);
}

/* the answer only, no reasoning at all: --json has no "reasoning" */
static bool answer_plain(fake *f, const qw_request *r)
{
	fake_accepted(f, 3);
	fake_chunk(f, 3, "ok", NULL, ids_hello, 1);
	fake_done(f, 3, "length", 5, 1, 1.0, 2.0);
	return true;
}

static void test_submit_raw_and_token_ids(void **state)
{
	char *dir = scratch_new(), *out, *err;
	write_file(path_in(dir, "a.png"), "RIFF\0\0\0\0WEBPIMG", 15);   /* a WebP's magic */
	write_file(path_in(dir, "prompt.txt"), "from stdin <|image_pad|>", 24);
	pid_t pid = fake_start(dir, answer_plain, 1, NULL);
	char args[8192];
	snprintf(args, sizeof args, "submit --raw --image %s --json -", path_in(dir, "a.png"));
	assert_int_equal(ctl(dir, path_in(dir, "prompt.txt"), &out, &err, args), 0);
	assert_int_equal(fake_end(pid), 0);
	json_t *o = parse_json(out);
	assert_null(json_object_get(o, "reasoning"));
	assert_string_equal(json_string_value(json_object_get(o, "finish_reason")), "length");
	json_decref(o);
	qw_request r;
	fake_request(dir, 0, &r);
	assert_null(r.messages);
	assert_int_equal(r.prompt_len, 24);
	assert_memory_equal(r.prompt, "from stdin <|image_pad|>", 24);
	assert_int_equal(r.n_images, 1);
	assert_int_equal(r.images[0].len, 15);
	assert_memory_equal(r.images[0].data, "RIFF\0\0\0\0WEBPIMG", 15);
	qw_request_free(&r);
	free(out);
	free(err);

	pid = fake_start(dir, answer_plain, 1, NULL);
	snprintf(args, sizeof args, "submit --token-ids 1,2,151655 --image %s --stop x",
		 path_in(dir, "a.png"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_string_equal(out, "ok\n");
	assert_contains(err, "finish length");
	fake_request(dir, 0, &r);
	assert_null(r.messages);
	assert_null(r.prompt);
	assert_int_equal(r.n_token_ids, 3);
	assert_int_equal(r.token_ids[0], 1);
	assert_int_equal(r.token_ids[2], 151655);
	assert_int_equal(r.n_images, 1);
	assert_int_equal(r.n_stop, 1);
	qw_request_free(&r);
	free(out);
	free(err);
	scratch_free(dir);
}

/* submit --messages: the conversation as the file has it, images read from their paths */
static void test_submit_messages(void **state)
{
	char *dir = scratch_new(), *out, *err;
	char conv[4200], pics[4200];
	snprintf(conv, sizeof conv, "%s/conv", dir);
	snprintf(pics, sizeof pics, "%s/conv/pics", dir);
	assert_int_equal(mkdir(conv, 0755), 0);
	assert_int_equal(mkdir(pics, 0755), 0);
	write_file(path_in(pics, "a.png"), "\x89PNG\r\n\x1a\n-one", 12);
	write_file(path_in(dir, "b.jpg"), "\xff\xd8\xff-two", 7);
	char json[8192];
	snprintf(json, sizeof json,
		 "[{\"role\": \"system\", \"content\": \"Be brief.\"},\n"
		 " {\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
		 "\"pics/a.png\"}, {\"type\": \"text\", \"text\": \"What is it?\"}]},\n"
		 " {\"role\": \"assistant\", \"content\": \"A house.\", \"reasoning_content\": "
		 "\"It has a roof.\"},\n"
		 " {\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
		 "\"file://%s\"}, {\"type\": \"text\", \"text\": \"And this?\"}]}]\n",
		 path_in(dir, "b.jpg"));
	write_file(path_in(conv, "m.json"), json, strlen(json));
	pid_t pid = fake_start(dir, answer_plain, 1, NULL);
	char args[8400];
	snprintf(args, sizeof args, "submit --messages %s --max-tokens 8", path_in(conv, "m.json"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_string_equal(out, "ok\n");
	qw_request r;
	fake_request(dir, 0, &r);
	assert_int_equal(r.n_messages, 4);
	static const char *const roles[] = {"system", "user", "assistant", "user"};
	static const int items[] = {1, 2, 1, 2};
	for (int m = 0; m < 4; m++) {
		assert_int_equal(r.messages[m].role_len, strlen(roles[m]));
		assert_memory_equal(r.messages[m].role, roles[m], strlen(roles[m]));
		assert_int_equal(r.messages[m].n_items, items[m]);
	}
	expect_text(&r.messages[0].items[0], "Be brief.");
	assert_int_equal(r.messages[1].items[0].kind, QW_ITEM_IMAGE);
	assert_int_equal(r.messages[1].items[0].len, 12);
	assert_memory_equal(r.messages[1].items[0].data, "\x89PNG\r\n\x1a\n-one", 12);
	expect_text(&r.messages[1].items[1], "What is it?");
	expect_text(&r.messages[2].items[0], "A house.");
	assert_int_equal(r.messages[2].reasoning_len, 14);
	assert_memory_equal(r.messages[2].reasoning, "It has a roof.", 14);
	assert_null(r.messages[1].reasoning);
	assert_int_equal(r.messages[3].items[0].len, 7);
	assert_memory_equal(r.messages[3].items[0].data, "\xff\xd8\xff-two", 7);
	expect_text(&r.messages[3].items[1], "And this?");
	assert_int_equal(r.max_tokens, 8);
	assert_null(r.prompt);
	assert_int_equal(r.n_images, 0);
	qw_request_free(&r);
	free(out);
	free(err);

	/* an OpenAI-shaped object on stdin */
	const char *obj = "{\"model\": \"x\", \"messages\": [{\"role\": \"user\", \"content\": "
			  "\"hi\"}]}";
	write_file(path_in(dir, "obj.json"), obj, strlen(obj));
	pid = fake_start(dir, answer_plain, 1, NULL);
	assert_int_equal(ctl(dir, path_in(dir, "obj.json"), &out, &err, "submit --messages -"), 0);
	assert_int_equal(fake_end(pid), 0);
	fake_request(dir, 0, &r);
	assert_int_equal(r.n_messages, 1);
	expect_text(&r.messages[0].items[0], "hi");
	qw_request_free(&r);
	free(out);
	free(err);

	/* what is wrong with a file is said before anything is sent: exit 2 */
	static const struct {
		const char *json, *msg;
	} bad[] = {
		{"[{\"role\": \"user\", \"content\": \"hi\"},", "not JSON (line 1"},
		{"{\"messages\": []}", "expected a non-empty array of messages"},
		{"[{\"role\": \"robot\", \"content\": \"hi\"}]", "message 1: \"role\" must be"},
		{"[{\"role\": \"user\"}]", "message 1: \"content\" must be"},
		{"[{\"role\": \"user\", \"content\": [{\"type\": \"video\"}]}]",
		 "message 1, item 1: items are"},
		{"[{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
		 "\"pics/none.png\"}]}]", "pics/none.png: cannot open"},
		{"[{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": "
		 "\"m.json\"}]}]", "m.json: not an image (JPEG, PNG or WebP)"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		write_file(path_in(conv, "bad.json"), bad[i].json, strlen(bad[i].json));
		snprintf(args, sizeof args, "submit --messages %s", path_in(conv, "bad.json"));
		int rc = ctl(dir, NULL, &out, &err, args);
		if (rc != 2)
			fail_msg("%s: exit %d, not 2:\n%s", bad[i].json, rc, err);
		assert_contains(err, bad[i].msg);
		assert_contains(err, "bad.json");
		free(out);
		free(err);
	}
	assert_int_equal(fake_count(dir), 1);   /* the stdin request of before, alone */
	scratch_free(dir);
}

static bool answer_not_ready(fake *f, const qw_request *r)
{
	fake_error(f, 0, "not_ready", "loading weights: 40%");
	return true;
}

static bool answer_busy(fake *f, const qw_request *r)
{
	fake_error(f, 0, "busy", "1024 requests queued");
	return true;
}

/* accepted, then nothing before the daemon goes away */
static bool answer_and_die(fake *f, const qw_request *r)
{
	fake_accepted(f, 5);
	return false;
}

/* accepted, some of the answer, then an error */
static bool answer_half(fake *f, const qw_request *r)
{
	fake_accepted(f, 6);
	fake_chunk(f, 6, "half", NULL, ids_hello, 1);
	fake_error(f, 6, "internal", "the pipeline failed");
	return true;
}

static bool answer_loading(fake *f, const qw_request *r)
{
	fake_status(f, "{\"state\": \"loading\"}");
	return true;
}

static bool answer_never(fake *f, const qw_request *r)
{
	usleep(1500000);
	return false;
}

static void test_exit_statuses(void **state)
{
	char *dir = scratch_new(), *out, *err;
	/* nothing there: 3 */
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit hi"), 3);
	assert_contains(err, "qwend is not running (no socket at ");
	assert_contains(err, "/qwend.sock)");
	free(out);
	free(err);
	assert_int_equal(ctl(dir, NULL, &out, &err, "status"), 3);
	assert_contains(err, "qwend is not running");
	free(out);
	free(err);
	/* a socket file nobody listens on: 3, within the timeout */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s/qwend.sock", dir);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	close(fd);
	assert_int_equal(ctl(dir, NULL, &out, &err, "--timeout 0.3 status"), 3);
	assert_contains(err, "qwend does not answer at ipc://");
	assert_contains(err, "no connection in ");   /* the time waited: 0.3 s or, loaded, more */
	free(out);
	free(err);
	unlink(path_in(dir, "qwend.sock"));
	/* a daemon that takes the request and never answers */
	pid_t pid = fake_start(dir, answer_never, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit --timeout 0.3 hi"), 3);
	assert_contains(err, "does not answer");
	assert_int_equal(fake_end(pid), 0);
	free(out);
	free(err);
	/* a daemon that goes away mid-request */
	pid = fake_start(dir, answer_and_die, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit hi"), 3);
	assert_contains(err, "qwend closed the connection");
	assert_int_equal(fake_end(pid), 0);
	free(out);
	free(err);
	/* error replies: 1, with the code and what it means */
	pid = fake_start(dir, answer_not_ready, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit hi"), 1);
	assert_contains(err, "qwenctl: not_ready: loading weights: 40%");
	assert_contains(err, "still loading");
	assert_int_equal(fake_end(pid), 0);
	free(out);
	free(err);
	pid = fake_start(dir, answer_busy, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit hi"), 1);
	assert_contains(err, "qwenctl: busy: 1024 requests queued");
	assert_int_equal(fake_end(pid), 0);
	free(out);
	free(err);
	/* an error mid-answer: what came ends its line, then the error */
	pid = fake_start(dir, answer_half, 1, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "submit hi"), 1);
	assert_string_equal(out, "half\n");
	assert_contains(err, "qwenctl: internal: the pipeline failed");
	assert_int_equal(fake_end(pid), 0);
	free(out);
	free(err);
	/* the socket as a bare path, as well as ipc://PATH */
	pid = fake_start(dir, answer_loading, 1, NULL);
	assert_int_equal(run_capture(&out, "%s --socket %s status", program("qwenctl"),
				     path_in(dir, "qwend.sock")), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "qwend       loading");
	free(out);
	scratch_free(dir);
}

static void test_usage_errors(void **state)
{
	char *dir = scratch_new(), *out, *err;
	static const struct {
		const char *args, *msg;
	} cases[] = {
		{"", "no command"},
		{"frobnicate", "unknown command 'frobnicate'"},
		{"submit", "needs a PROMPT (- reads stdin), --token-ids or --messages"},
		{"submit hi --token-ids 1,2", "give one of a PROMPT, --token-ids and --messages"},
		{"submit one two", "one PROMPT"},
		{"submit --raw --token-ids 1", "--raw is for a PROMPT"},
		{"submit --system s --raw hi", "--system goes with a chat PROMPT"},
		{"submit --top-p 0 hi", "--top-p"},
		{"submit --temperature 101 hi", "--temperature"},
		{"submit --max-tokens 0 hi", "--max-tokens"},
		{"submit --token-ids 1,x", "--token-ids"},
		{"submit --image /nonexistent/img.png hi", "/nonexistent/img.png: cannot open"},
		{"submit --stop '' hi", "--stop"},
		{"submit --bogus hi", "qwenctl: submit: unknown option '--bogus'\nusage:"},
		{"submit --min-p 1.5 hi", "--min-p"},
		{"submit --repetition-penalty 0 hi", "--repetition-penalty"},
		{"submit --frequency-penalty 3 hi", "--frequency-penalty"},
		{"submit --logprobs 2 hi", "--logprobs are given in the --json output: add --json"},
		{"submit --json --logprobs 21 hi", "--logprobs"},
		{"submit hi --image", "qwenctl: submit: --image needs a value\nusage:"},
		{"status --json=yes", "qwenctl: status: --json takes no value"},
		{"-x status", "qwenctl: unknown option '-x'\nusage:"},
		{"--socket '' status", "--socket: '' is not an endpoint"},
		{"submit hi --messages m.json", "give one of a PROMPT, --token-ids and --messages"},
		{"submit --messages m.json --system s", "--messages holds the whole conversation"},
		{"submit --messages /nonexistent/m.json", "/nonexistent/m.json: cannot open"},
		{"--timeout 0 status", "--timeout"},
		{"--timeout x status", "--timeout"},
		{"status extra", "no arguments"},
		{"cancel", "one request ID"},
		{"cancel abc", "cancel ID"},
		{"shutdown now", "no arguments"},
		{"bench --concurrency 0", "--concurrency"},
		{"bench --prompt-tokens -1", "--prompt-tokens"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int rc = ctl(dir, NULL, &out, &err, cases[i].args);
		if (rc != 2)
			fail_msg("qwenctl %s: exit %d, not 2:\n%s", cases[i].args, rc, err);
		assert_contains(err, cases[i].msg);
		/* said once: getopt's own message is off */
		assert_null(strstr(err, "unrecognized"));
		assert_null(strstr(err, "requires an argument"));
		assert_string_equal(out, "");
		free(out);
		free(err);
	}
	/* files that are not images are refused before anything is sent, by name */
	write_file(path_in(dir, "README.md"), "# qwen-vl\n", 10);
	write_file(path_in(dir, "cat.gif"), "GIF89a....", 10);
	char args[4300];
	snprintf(args, sizeof args, "submit --image %s hi", path_in(dir, "README.md"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 2);
	assert_contains(err, "qwenctl: --image ");
	assert_contains(err, "/README.md: not an image (JPEG, PNG or WebP)");
	free(out);
	free(err);
	snprintf(args, sizeof args, "submit --image %s hi", path_in(dir, "cat.gif"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 2);
	assert_contains(err, "/cat.gif: a GIF image; qwend takes JPEG, PNG or WebP");
	free(out);
	free(err);
	/* a directory is not an image; neither is a file past the size cap */
	snprintf(args, sizeof args, "submit --image %s hi", dir);
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 2);
	assert_contains(err, "not a regular file");
	free(out);
	free(err);
	write_file(path_in(dir, "big.png"), "", 0);
	assert_int_equal(truncate(path_in(dir, "big.png"), (33 << 20)), 0);
	snprintf(args, sizeof args, "submit --image %s hi", path_in(dir, "big.png"));
	assert_int_equal(ctl(dir, NULL, &out, &err, args), 2);
	assert_contains(err, "at most 32 MiB");
	free(out);
	free(err);
	/* --help lists every option with its default, on stdout */
	assert_int_equal(run_capture(&out, "%s --help", program("qwenctl")), 0);
	assert_contains(out, "--concurrency C");
	assert_contains(out, "(default 4)");
	assert_contains(out, "--no-stream");
	assert_contains(out, "Exit status: 0 ok, 1");
	free(out);
	scratch_free(dir);
}

// ---------------------------------------------------------------------------------------
// status, cancel, shutdown

static const char status_ready[] =
	"{\"state\": \"ready\", \"uptime_s\": 3723.5, \"model\": {\"path\": \"/models/Qwen3-VL\", "
	"\"type\": \"qwen3_vl_moe\", \"layers\": 94, \"params\": 235000000000, "
	"\"active_params\": 22000000000, \"vocab\": 1000, \"tokenizer\": true, "
	"\"thinking\": true, \"vision\": true}, \"device\": \"cuda\", \"load\": {\"bytes_done\": 504658657280, "
	"\"bytes_total\": 504658657280}, \"stages\": [{\"index\": 0, \"layers\": [0, 24], "
	"\"pid\": 123, \"state\": \"ready\", \"device\": \"cuda:0\", \"weight_bytes\": "
	"129385889792, \"kv_bytes\": 12884901888, \"step_bytes\": 3221225472, "
	"\"device_free_bytes\": 1610612736}, {\"index\": 1, \"layers\": [24, 94], \"pid\": "
	"124, \"state\": \"ready\", \"device\": \"cuda:1\", \"weight_bytes\": 375809638400, "
	"\"kv_bytes\": 12884901888, \"extra\": [1, 2]}], \"kv\": {\"blocks_total\": 5000, "
	"\"blocks_used\": 1250, \"blocks_cached\": 300, \"blocks_free\": 3450, "
	"\"block_tokens\": 16, \"capacity_tokens\": 80000, \"used_tokens\": 20000}, "
	"\"prefix_cache\": {\"enabled\": true, \"lookups\": 30, \"hits\": 12, "
	"\"prompt_tokens\": 8192, \"hit_tokens\": 4096, \"hit_rate\": 0.5, "
	"\"images_skipped\": 2, \"cached_blocks\": 300, \"evictions\": 5}, "
	"\"vision_cache\": {\"enabled\": true, \"capacity_tokens\": 8192, \"tokens\": 3000, "
	"\"images\": 3, \"hits\": 7, \"misses\": 5, \"evictions\": 2}, \"requests\": {\"queued\": 3, \"running\": 2, \"max_queue\": "
	"1024, \"max_seqs\": 256, \"served\": 120, \"failed\": 1, \"refused\": {\"bad_request\": 2, "
	"\"too_large\": 1, \"busy\": 0}}, \"throughput\": "
	"{\"window_s\": 10, \"prompt_tokens_per_s\": 1234.5, \"generated_tokens_per_s\": 456.7}, "
	"\"settings\": {\"max-seqs\": 256, \"max-request-bytes\": 67108864, \"log-level\": "
	"\"info\"}, \"settings_text\": {\"max-seqs\": \"256\", \"max-request-bytes\": \"64M\", "
	"\"log-level\": \"info\"}, \"future\": {\"x\": 1}}";

static const char status_loading[] =
	"{\"state\": \"loading\", \"model\": {\"path\": \"/m\"}, \"load\": {\"bytes_done\": 45, "
	"\"bytes_total\": 100, \"elapsed_s\": 9.2, \"eta_s\": 11.3}}";

static bool answer_status(fake *f, const qw_request *r)
{
	assert_int_equal(r->op, QW_OP_STATUS);
	fake_status(f, f->user);
	return true;
}

static void test_status(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_status, 1, (void *)status_ready);
	int rc = ctl(dir, NULL, &out, &err, "status");
	if (rc != 0)
		fail_msg("exit %d:\n%s\n%s", rc, out, err);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "ready, up 1h 02m 03s");
	assert_contains(out, "/models/Qwen3-VL (qwen3_vl_moe): 94 layers, 235.000 B params "
			"(22.000 B active), vocab 1000, tokenizer, thinking");
	/* bytes in binary units, as the log writes them; layers [begin, end) as the log */
	assert_contains(out, "100.0% (470.00 GiB of 470.00 GiB)");
	assert_contains(out, "stage 0     layers [0, 24)     pid 123     ready      cuda:0  weights "
			"120.50 GiB  KV 12.00 GiB  steps 3.00 GiB  free 1.50 GiB\n");
	assert_contains(out, "stage 1     layers [24, 94)    pid 124");
	assert_contains(out, "1250 / 5000 blocks (25.0%), 300 cached, 20000 / 80000 tokens (25.0%), "
			"16 tokens a block");
	assert_contains(out, "prefix      on: 12 of 30 admissions hit, 4096 of 8192 tokens (50.0%) "
			"from the cache, 2 images not seen again; 300 blocks cached, 5 evicted");
	assert_contains(out, "vision      on: 7 of 12 images from the cache (no tower); 3 images "
			"cached, 3000 of 8192 tokens, 2 evicted\n");
	assert_contains(out, "3 queued (at most 1024), 2 running (at most 256); 120 served, 1 "
			"failed, 3 refused (2 bad_request, 1 too_large)\n");
	assert_contains(out, "1234.5 prompt tokens/s, 456.7 generated tokens/s (last 10 s)");
	/* the settings as a config file writes them */
	assert_contains(out, "max-seqs=256");
	assert_contains(out, "max-request-bytes=64M");
	assert_null(strstr(out, "67108864"));
	assert_contains(out, "log-level=info");
	free(out);
	free(err);

	pid = fake_start(dir, answer_status, 1, (void *)status_ready);
	assert_int_equal(ctl(dir, NULL, &out, &err, "status --json"), 0);
	assert_int_equal(fake_end(pid), 0);
	char want[sizeof status_ready + 1];
	snprintf(want, sizeof want, "%s\n", status_ready);
	assert_string_equal(out, want);
	free(out);
	free(err);

	/* loading: the state and how far, and only what is there */
	pid = fake_start(dir, answer_status, 1, (void *)status_loading);
	assert_int_equal(ctl(dir, NULL, &out, &err, "status"), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "qwend       loading");
	assert_contains(out, "45.0% (45 B of 100 B), 9 s so far, about 12 s left\n");
	assert_true(strstr(out, "stage") == NULL && strstr(out, "KV cache") == NULL);
	free(out);
	free(err);
	scratch_free(dir);
}

static bool answer_cancel(fake *f, const qw_request *r)
{
	if (r->op == QW_OP_CANCEL && r->target == 42)
		fake_ok(f, "request 42 cancelled");
	else if (r->op == QW_OP_CANCEL)
		fake_error(f, 0, "bad_request", "no request 43");
	else if (r->op == QW_OP_SHUTDOWN)
		fake_ok(f, "shutting down after 2 running requests");
	return true;
}

static void test_cancel_shutdown(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_cancel, 3, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "cancel 42"), 0);
	assert_string_equal(out, "request 42 cancelled\n");
	free(out);
	free(err);
	assert_int_equal(ctl(dir, NULL, &out, &err, "cancel 43"), 1);
	assert_contains(err, "qwenctl: bad_request: no request 43");
	free(out);
	free(err);
	assert_int_equal(ctl(dir, NULL, &out, &err, "shutdown"), 0);
	assert_string_equal(out, "shutting down after 2 running requests\n");
	free(out);
	free(err);
	assert_int_equal(fake_end(pid), 0);
	qw_request r;
	fake_request(dir, 0, &r);
	assert_int_equal(r.op, QW_OP_CANCEL);
	assert_int_equal(r.target, 42);
	qw_request_free(&r);
	fake_request(dir, 2, &r);
	assert_int_equal(r.op, QW_OP_SHUTDOWN);
	qw_request_free(&r);
	scratch_free(dir);
}

/* Ctrl-C: the fake interrupts qwenctl (its pid is in DIR/pid) after the first chunk, then
 * expects the cancel */
static bool answer_interrupt(fake *f, const qw_request *r)
{
	if (r->op == QW_OP_SUBMIT) {
		fake_accepted(f, 9);
		fake_chunk(f, 9, "partial", NULL, ids_hello, 1);
		char *pid = read_file(path_in(f->dir, "pid"), NULL);
		kill(atoi(pid), SIGINT);
		free(pid);
	} else if (r->op == QW_OP_CANCEL) {
		fake_ok(f, "cancelling request 9");
		fake_done(f, r->target, "cancelled", 3, 1, 1, 1);
	}
	return true;
}

static void test_interrupt_cancels(void **state)
{
	char *dir = scratch_new(), *out;
	pid_t pid = fake_start(dir, answer_interrupt, 2, NULL);
	int rc = run_capture(&out, "sh -c 'echo $$ >%s/pid; exec %s --socket %s submit hi "
			     "2>%s/stderr'", dir, program("qwenctl"), fake_endpoint(dir), dir);
	/* run_capture's output is stdout alone here: stderr went to the file */
	char *err = read_file(path_in(dir, "stderr"), NULL);
	if (rc != 130)
		fail_msg("exit %d, not 130:\n%s\n%s", rc, out, err);
	assert_int_equal(fake_end(pid), 0);
	/* the partial answer, if it came before the signal, ends its line; "cancelled" is said
	 * once */
	if (*out)
		assert_string_equal(out, "partial\n");
	assert_contains(err, "qwenctl: interrupted; request 9 cancelled\n");
	assert_null(strstr(err, "cancelling request 9"));
	assert_null(strstr(strstr(err, "cancelled") + 1, "cancelled"));
	qw_request r;
	fake_request(dir, 1, &r);
	assert_int_equal(r.op, QW_OP_CANCEL);
	assert_int_equal(r.target, 9);
	qw_request_free(&r);
	free(out);
	free(err);
	scratch_free(dir);
}

// ---------------------------------------------------------------------------------------
// bench

/* status (ready, vocab 1000), then every submit: accepted, 4 one-token chunks, done; with
 * user set, every third submit is answered busy */
static bool answer_bench(fake *f, const qw_request *r)
{
	if (r->op == QW_OP_STATUS) {
		fake_status(f, status_ready);
		return true;
	}
	if (f->user && f->n % 3 == 0) {
		fake_error(f, 0, "busy", "queue full");
		return true;
	}
	uint64_t id = f->next_id++;
	fake_accepted(f, id);
	for (int i = 0; i < 4; i++) {
		int32_t tok = 500 + i;
		usleep(500);
		fake_chunk(f, id, "x", NULL, &tok, 1);
	}
	fake_done(f, id, "length", r->n_token_ids, 4, 1, 1);
	return true;
}

static void test_bench(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_bench, 9, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "bench --concurrency 3 --requests 7 "
			     "--prompt-tokens 16 --max-tokens 4 --seed 5 --json"), 0);
	assert_int_equal(fake_end(pid), 0);
	json_t *o = parse_json(out);
	assert_int_equal(jnum(o, "requests"), 7);
	assert_int_equal(jnum(o, "completed"), 7);
	assert_int_equal(jnum(o, "failed"), 0);
	assert_true(jnum(o, "request_throughput") > 0);
	assert_true(jnum(o, "output_tokens_per_s") > 0);
	/* 16 prompt + 4 output tokens a request */
	double ratio = jnum(o, "total_tokens_per_s") / jnum(o, "output_tokens_per_s");
	assert_true(ratio > 4.99 && ratio < 5.01);
	json_t *ttft = json_object_get(o, "ttft_ms"), *lat = json_object_get(o, "latency_ms");
	json_t *itl = json_object_get(o, "itl_ms");
	assert_true(jnum(ttft, "p50") >= 0 && jnum(ttft, "p50") <= jnum(ttft, "p99"));
	assert_true(jnum(lat, "p50") >= jnum(ttft, "p50") && jnum(lat, "p90") <= jnum(lat, "p99"));
	assert_true(jnum(itl, "p50") > 0 && jnum(itl, "p50") <= jnum(itl, "p99"));
	assert_int_equal(json_object_size(json_object_get(o, "errors")), 0);
	assert_true(json_is_null(json_object_get(json_object_get(o, "prefix_cache"), "hit_rate")));
	json_decref(o);
	/* what the fake got: status, then 7 distinct prompts of 16 ids in [100, 1000), then
	 * status again (its prefix-cache figures did not change: no hit rate) */
	assert_int_equal(fake_count(dir), 9);
	qw_request r, first;
	fake_request(dir, 0, &r);
	assert_int_equal(r.op, QW_OP_STATUS);
	qw_request_free(&r);
	fake_request(dir, 1, &first);
	for (int n = 1; n < 8; n++) {
		fake_request(dir, n, &r);
		assert_int_equal(r.op, QW_OP_SUBMIT);
		assert_int_equal(r.n_token_ids, 16);
		for (int i = 0; i < 16; i++)
			assert_true(r.token_ids[i] >= 100 && r.token_ids[i] < 1000);
		assert_true(r.greedy && r.ignore_eos && r.stream);
		assert_int_equal(r.max_tokens, 4);
		if (n > 1)
			assert_true(memcmp(r.token_ids, first.token_ids, 16 * sizeof(int32_t)) != 0);
		qw_request_free(&r);
	}
	qw_request_free(&first);
	free(out);
	free(err);

	/* busy answers are counted, not fatal; the report names them */
	pid = fake_start(dir, answer_bench, 8, (void *)1);
	assert_int_equal(ctl(dir, NULL, &out, &err, "bench -c 2 -N 6 -p 8 -n 4"), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "# bench: 6 requests, concurrency 2, prompt 8 tokens");
	assert_contains(out, "4 done, 2 failed");
	assert_contains(out, "busy x 2 (first: queue full)");
	assert_contains(out, "TTFT ms");
	assert_contains(out, "inter-token ms");
	free(out);
	free(err);

	/* not ready: 1, and why */
	pid = fake_start(dir, answer_status, 1, (void *)status_loading);
	assert_int_equal(ctl(dir, NULL, &out, &err, "bench -N 2"), 1);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(err, "not ready (state loading, weights 45% loaded)");
	free(out);
	free(err);
	scratch_free(dir);
}

/* status (ready; the prefix cache's figures grow between the first and the second), then
 * every submit: accepted, 4 tokens 500..503, done; with user set, the first submit is
 * answered busy */
static bool answer_turns(fake *f, const qw_request *r)
{
	if (r->op == QW_OP_STATUS) {
		fake_status(f, f->n == 0
			    ? "{\"state\": \"ready\", \"model\": {\"vocab\": 1000}, \"prefix_cache\": "
			      "{\"hit_tokens\": 100, \"prompt_tokens\": 1000}}"
			    : "{\"state\": \"ready\", \"model\": {\"vocab\": 1000}, \"prefix_cache\": "
			      "{\"hit_tokens\": 400, \"prompt_tokens\": 2000}}");
		return true;
	}
	if (f->user && f->n == 1) {
		fake_error(f, 0, "busy", "queue full");
		return true;
	}
	uint64_t id = f->next_id++;
	const int32_t toks[4] = {500, 501, 502, 503};
	fake_accepted(f, id);
	fake_chunk(f, id, "x", NULL, toks, 4);
	fake_done(f, id, "length", r->n_token_ids, 4, 1, 1);
	return true;
}

/* --shared-prefix and --turns: every prompt begins with the same 12 ids; each turn resends
 * the last prompt and its answer and adds 8 ids; the hit rate is the daemon's over the run. */
static void test_bench_shared_and_turns(void **state)
{
	char *dir = scratch_new(), *out, *err;
	pid_t pid = fake_start(dir, answer_turns, 8, NULL);
	int rc = ctl(dir, NULL, &out, &err, "bench -c 2 -N 6 -p 8 -n 4 --shared-prefix 12 "
		     "--turns 3 --seed 3 --json");
	if (rc != 0)
		fail_msg("exit %d:\n%s\n%s", rc, out, err);
	assert_int_equal(fake_end(pid), 0);
	json_t *o = parse_json(out);
	assert_int_equal(jnum(o, "completed"), 6);
	assert_int_equal(jnum(o, "shared_prefix"), 12);
	assert_int_equal(jnum(o, "turns"), 3);
	json_t *pc = json_object_get(o, "prefix_cache");
	assert_true(jnum(pc, "hit_tokens") == 300 && jnum(pc, "prompt_tokens") == 1000);
	assert_true(jnum(pc, "hit_rate") > 0.2999 && jnum(pc, "hit_rate") < 0.3001);
	assert_true(jnum(o, "prompt_tokens_per_s") > 0);
	json_decref(o);
	/* two conversations of 3 turns: 20, 32 and 44 ids */
	qw_request r[8];
	for (int n = 1; n < 7; n++)
		fake_request(dir, n, &r[n]);
	int turns_seen[3] = {0};
	for (int n = 1; n < 7; n++) {
		assert_int_equal(r[n].op, QW_OP_SUBMIT);
		assert_memory_equal(r[n].token_ids, r[1].token_ids, 12 * sizeof(int32_t));
		int t = (r[n].n_token_ids - 20) / 12;
		assert_true(t >= 0 && t < 3 && r[n].n_token_ids == 20 + 12 * t);
		turns_seen[t]++;
		if (t == 0)
			continue;
		/* the turn before it: the prompt it extends, then the answer 500..503 */
		bool found = false;
		for (int k = 1; k < n && !found; k++)
			found = r[k].n_token_ids == r[n].n_token_ids - 12 &&
				memcmp(r[k].token_ids, r[n].token_ids,
				       (size_t)r[k].n_token_ids * sizeof(int32_t)) == 0;
		assert_true(found);
		for (int i = 0; i < 4; i++)
			assert_int_equal(r[n].token_ids[r[n].n_token_ids - 12 + i], 500 + i);
	}
	for (int t = 0; t < 3; t++)
		assert_int_equal(turns_seen[t], 2);
	/* the own ids of the two first turns differ */
	assert_true(memcmp(r[1].token_ids + 12, r[2].token_ids + 12, 8 * sizeof(int32_t)) != 0);
	for (int n = 1; n < 7; n++)
		qw_request_free(&r[n]);
	free(out);
	free(err);

	/* the text report names them */
	pid = fake_start(dir, answer_turns, 4, NULL);
	assert_int_equal(ctl(dir, NULL, &out, &err, "bench -c 1 -N 2 -p 8 -n 4 --shared-prefix 12 "
			     "--turns 2"), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "prompt 8 tokens after a shared prefix of 12, conversations of 2 turns");
	assert_contains(out, "300 of 1000 prompt tokens (30.0%) from the daemon's prefix cache");
	free(out);
	free(err);
	/* a turn that fails ends its conversation: the turn after it is never sent */
	char *dir2 = scratch_new();
	pid = fake_start(dir2, answer_turns, 5, (void *)1);
	assert_int_equal(ctl(dir2, NULL, &out, &err, "bench -c 1 -N 4 -p 8 -n 4 --turns 2"), 0);
	assert_int_equal(fake_end(pid), 0);
	assert_contains(out, "2 done, 1 failed, 1 not finished");
	assert_int_equal(fake_count(dir2), 5);   /* status, 3 submits, status */
	free(out);
	free(err);
	scratch_free(dir2);
	/* too long for a request */
	assert_int_equal(ctl(dir, NULL, &out, &err, "bench --shared-prefix 100000 --turns 1000"), 2);
	assert_contains(err, "longer than a request may be");
	free(out);
	free(err);
	scratch_free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_submit_chat),
		cmocka_unit_test(test_submit_logprobs),
		cmocka_unit_test(test_submit_thinking_and_json),
		cmocka_unit_test(test_submit_raw_and_token_ids),
		cmocka_unit_test(test_submit_messages),
		cmocka_unit_test(test_exit_statuses),
		cmocka_unit_test(test_usage_errors),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_cancel_shutdown),
		cmocka_unit_test(test_interrupt_cancels),
		cmocka_unit_test(test_bench),
		cmocka_unit_test(test_bench_shared_and_turns),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
