/* ctl_status.c - qwenctl status: the daemon's status JSON as a readable summary (what is
 * there of it; missing fields are skipped, unknown ones ignored), or as it is with --json.
 * See ctl.h. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/ctl.h"
#include "loader/units.h"

static bool num(const json_t *obj, const char *key, double *out)
{
	const json_t *v = json_object_get(obj, key);
	if (!json_is_number(v))
		return false;
	*out = json_number_value(v);
	return true;
}

static const char *str(const json_t *obj, const char *key)
{
	return json_string_value(json_object_get(obj, key));
}

static const char *bytes(const json_t *obj, const char *key, char *buf, int len)
{
	double v;
	return num(obj, key, &v) && v >= 0 ? qw_fmt_bytes((uint64_t)v, buf, len) : "?";
}

static void print_uptime(double s)
{
	long t = (long)s;
	if (t >= 86400)
		printf(", up %ldd %02ldh %02ldm", t / 86400, t / 3600 % 24, t / 60 % 60);
	else if (t >= 3600)
		printf(", up %ldh %02ldm %02lds", t / 3600, t / 60 % 60, t % 60);
	else if (t >= 60)
		printf(", up %ldm %02lds", t / 60, t % 60);
	else
		printf(", up %.1f s", s);
}

static void print_model(const json_t *m)
{
	const char *path = str(m, "path"), *type = str(m, "type");
	double v;
	char buf[32];
	printf("%-11s %s", "model", path ? path : "?");
	if (type)
		printf(" (%s)", type);
	if (json_is_true(json_object_get(m, "demo")))
		printf(" [the demo: random weights]");
	const char *sep = ": ";
	if (num(m, "layers", &v)) {
		printf("%s%.0f layers", sep, v);
		sep = ", ";
	}
	if (num(m, "params", &v) && v >= 0) {
		printf("%s%s params", sep, qw_fmt_count((uint64_t)v, buf, sizeof buf));
		sep = ", ";
		if (num(m, "active_params", &v) && v >= 0)
			printf(" (%s active)", qw_fmt_count((uint64_t)v, buf, sizeof buf));
	}
	const json_t *q = json_object_get(m, "quantization");
	const char *method = str(q, "method");
	if (method) {
		const json_t *b = json_object_get(q, "block");
		printf("%s%s weights", sep, strcmp(method, "fp8") ? method : "FP8");
		if (json_array_size(b) == 2)
			printf(" (%.0f x %.0f blocks)", json_number_value(json_array_get(b, 0)),
			       json_number_value(json_array_get(b, 1)));
		sep = ", ";
	}
	if (num(m, "vocab", &v)) {
		printf("%svocab %.0f", sep, v);
		sep = ", ";
	}
	const json_t *tok = json_object_get(m, "tokenizer");
	const json_t *think = json_object_get(m, "thinking");
	if (json_is_boolean(tok)) {
		printf("%s%s", sep, json_is_true(tok) ? "tokenizer" : "no tokenizer (token ids only)");
		sep = ", ";
	}
	if (json_is_true(think))
		printf("%sthinking", sep);
	printf("\n");
}

static void print_stage(const json_t *s, size_t i)
{
	double v, pid;
	char w[32], kv[32], st[32], fr[32];
	char label[32];
	snprintf(label, sizeof label, "stage %.0f", num(s, "index", &v) ? v : (double)i);
	printf("%-11s", label);
	const json_t *layers = json_object_get(s, "layers");
	/* [begin, end), as the log writes a stage's layers */
	char range[48];
	if (json_array_size(layers) == 2 && json_is_number(json_array_get(layers, 0))) {
		snprintf(range, sizeof range, "[%.0f, %.0f)", json_number_value(json_array_get(layers, 0)),
			 json_number_value(json_array_get(layers, 1)));
		printf(" layers %-10s", range);
	}
	if (num(s, "pid", &pid))
		printf("  pid %-7.0f", pid);
	const char *state = str(s, "state"), *dev = str(s, "device");
	if (state)
		printf(" %-10s", state);
	if (dev)
		printf(" %-7s", dev);
	if (json_object_get(s, "weight_bytes"))
		printf(" weights %s", bytes(s, "weight_bytes", w, sizeof w));
	if (json_object_get(s, "kv_bytes"))
		printf("  KV %s", bytes(s, "kv_bytes", kv, sizeof kv));
	if (json_object_get(s, "step_bytes"))
		printf("  steps %s", bytes(s, "step_bytes", st, sizeof st));
	if (json_object_get(s, "device_free_bytes"))
		printf("  free %s", bytes(s, "device_free_bytes", fr, sizeof fr));
	printf("\n");
}

static void print_kv(const json_t *kv)
{
	double total, used, cap, utok, bt;
	const char *sep = "";
	printf("%-11s ", "KV cache");
	if (num(kv, "blocks_total", &total) && num(kv, "blocks_used", &used)) {
		printf("%.0f / %.0f blocks (%.1f%%)", used, total, total > 0 ? 100 * used / total : 0);
		sep = ", ";
	}
	double cached;
	if (num(kv, "blocks_cached", &cached))
		printf("%s%.0f cached", sep, cached);
	if (num(kv, "capacity_tokens", &cap) && num(kv, "used_tokens", &utok)) {
		printf("%s%.0f / %.0f tokens (%.1f%%)", sep, utok, cap,
		       cap > 0 ? 100 * utok / cap : 0);
		sep = ", ";
	}
	if (num(kv, "block_tokens", &bt))
		printf("%s%.0f tokens a block", sep, bt);
	printf("\n");
}

static void print_prefix(const json_t *p)
{
	double lookups, hits, prompt, hit, images, cached, evictions;
	printf("%-11s %s", "prefix", json_is_false(json_object_get(p, "enabled")) ? "off" : "on");
	if (num(p, "lookups", &lookups) && num(p, "hits", &hits))
		printf(": %.0f of %.0f admissions hit", hits, lookups);
	if (num(p, "prompt_tokens", &prompt) && num(p, "hit_tokens", &hit))
		printf(", %.0f of %.0f tokens (%.1f%%) from the cache", hit, prompt,
		       prompt > 0 ? 100 * hit / prompt : 0);
	if (num(p, "images_skipped", &images) && images > 0)
		printf(", %.0f image%s not seen again", images, images == 1 ? "" : "s");
	if (num(p, "cached_blocks", &cached) && num(p, "evictions", &evictions))
		printf("; %.0f blocks cached, %.0f evicted", cached, evictions);
	printf("\n");
}

static void print_vision_cache(const json_t *v)
{
	double hits, misses, images, tokens, cap, evictions;
	if (!json_is_true(json_object_get(v, "enabled"))) {
		printf("%-11s off\n", "vision");
		return;
	}
	printf("%-11s on", "vision");
	if (num(v, "hits", &hits) && num(v, "misses", &misses))
		printf(": %.0f of %.0f images from the cache (no tower)", hits, hits + misses);
	if (num(v, "images", &images) && num(v, "tokens", &tokens) &&
	    num(v, "capacity_tokens", &cap))
		printf("; %.0f image%s cached, %.0f of %.0f tokens", images, images == 1 ? "" : "s",
		       tokens, cap);
	if (num(v, "evictions", &evictions))
		printf(", %.0f evicted", evictions);
	printf("\n");
}

static void print_requests(const json_t *r)
{
	double q, run, mq, ms, served, failed;
	bool hq = num(r, "queued", &q), hr = num(r, "running", &run);
	printf("%-11s ", "requests");
	if (hq)
		printf("%.0f queued", q);
	if (hq && num(r, "max_queue", &mq))
		printf(" (at most %.0f)", mq);
	if (hr)
		printf("%s%.0f running", hq ? ", " : "", run);
	if (hr && num(r, "max_seqs", &ms))
		printf(" (at most %.0f)", ms);
	bool hs = num(r, "served", &served), hf = num(r, "failed", &failed);
	if (hs || hf)
		printf("%s", hq || hr ? "; " : "");
	if (hs)
		printf("%.0f served", served);
	if (hf)
		printf("%s%.0f failed", hs ? ", " : "", failed);
	/* refused before they ran, by code: "2 refused (1 bad_request, 1 too_large)" */
	const json_t *refused = json_object_get(r, "refused");
	const char *code;
	const json_t *n;
	double total = 0;
	json_object_foreach((json_t *)refused, code, n)
		total += json_is_number(n) ? json_number_value(n) : 0;
	if (json_is_object(refused)) {
		printf("%s%.0f refused", hs || hf ? ", " : hq || hr ? "; " : "", total);
		const char *sep = " (";
		json_object_foreach((json_t *)refused, code, n)
			if (json_is_number(n) && json_number_value(n) > 0) {
				printf("%s%.0f %s", sep, json_number_value(n), code);
				sep = ", ";
			}
		printf("%s", total > 0 ? ")" : "");
	}
	printf("\n");
}

static void print_settings(const json_t *set)
{
	const char *key;
	const json_t *val;
	int col = printf("%-11s", "settings");
	json_object_foreach((json_t *)set, key, val) {
		char *v = json_is_string(val) ? NULL
			  : json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
		const char *text = v ? v : json_string_value(val);
		int len = (int)(strlen(key) + strlen(text ? text : "") + 2);
		if (col + len > 96) {
			printf("\n%-11s", "");
			col = 11;
		}
		col += printf(" %s=%s", key, text && *text ? text : "\"\"");
		free(v);
	}
	printf("\n");
}

static void summary(const json_t *st)
{
	const char *state = str(st, "state");
	double v, done, total;
	printf("%-11s %s", "qwend", state ? state : "?");
	if (num(st, "uptime_s", &v))
		print_uptime(v);
	printf("\n");
	const json_t *model = json_object_get(st, "model");
	if (json_is_object(model))
		print_model(model);
	const char *dev = str(st, "device");
	if (dev)
		printf("%-11s %s\n", "device", dev);
	const json_t *load = json_object_get(st, "load");
	if (num(load, "bytes_done", &done) && num(load, "bytes_total", &total)) {
		char a[32], b[32];
		double elapsed, eta;
		printf("%-11s %.1f%% (%s of %s)", "weights", total > 0 ? 100 * done / total : 0,
		       qw_fmt_bytes((uint64_t)(done > 0 ? done : 0), a, sizeof a),
		       qw_fmt_bytes((uint64_t)(total > 0 ? total : 0), b, sizeof b));
		if (done < total && num(load, "elapsed_s", &elapsed))
			printf(", %.0f s so far", elapsed);
		if (done < total && num(load, "eta_s", &eta))
			printf(", about %.0f s left", eta + 0.5);
		printf("\n");
	}
	const json_t *stages = json_object_get(st, "stages");
	if (json_array_size(stages)) {
		for (size_t i = 0; i < json_array_size(stages); i++)
			if (json_is_object(json_array_get(stages, i)))
				print_stage(json_array_get(stages, i), i);
	}
	const json_t *kv = json_object_get(st, "kv");
	if (json_is_object(kv))
		print_kv(kv);
	const json_t *prefix = json_object_get(st, "prefix_cache");
	if (json_is_object(prefix))
		print_prefix(prefix);
	const json_t *vision = json_object_get(st, "vision_cache");
	if (json_is_object(vision) && json_is_true(json_object_get(json_object_get(st, "model"),
								     "vision")))
		print_vision_cache(vision);
	const json_t *req = json_object_get(st, "requests");
	if (json_is_object(req))
		print_requests(req);
	const json_t *tp = json_object_get(st, "throughput");
	double p, g, w;
	if (json_object_get(tp, "prompt_tokens_per_s") ||
	    json_object_get(tp, "generated_tokens_per_s")) {
		printf("%-11s ", "throughput");
		if (num(tp, "prompt_tokens_per_s", &p))
			printf("%.1f prompt tokens/s", p);
		if (num(tp, "generated_tokens_per_s", &g))
			printf("%s%.1f generated tokens/s", json_object_get(tp, "prompt_tokens_per_s")
			       ? ", " : "", g);
		if (num(tp, "window_s", &w))
			printf(" (last %.0f s)", w);
		printf("\n");
	}
	/* as a config file writes them (64M), from a daemon that says so */
	const json_t *set = json_object_get(st, "settings_text");
	if (!json_is_object(set))
		set = json_object_get(st, "settings");
	if (json_object_size(set))
		print_settings(set);
}

int ctl_status(ctl_common *c, int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, CTL_COMMON_OPTIONS};
	bool as_json = false;
	int opt;
	optind = 0;
	while ((opt = getopt_long(argc, argv, CTL_SHORT(""), opts, NULL)) != -1) {
		int common = ctl_common_opt(c, opt, optarg);
		if (common < 0)
			return CTL_USAGE;
		if (opt == 'j')
			as_json = true;
		else if (!common)
			return ctl_option_error("status", argv, opt);
	}
	if (optind != argc)
		return ctl_usage_error("status takes no arguments");
	char *text;
	json_t *st;
	int rc = ctl_fetch_status(c, &text, &st);
	if (rc == CTL_OK) {
		if (as_json)
			printf("%s\n", text);
		else
			summary(st);
	}
	free(text);
	json_decref(st);
	return rc;
}
