/* fuzz_prepare.c - libFuzzer target of request preparation: bytes decoded as a client
 * request (qw_request_decode) and prepared as qwend does (qw_request_prepare: the chat
 * template with tools and tool calls, images weighed from their headers and pad runs
 * expanded, tokens, M-RoPE positions, limits; a tokenize's prompt too), its images decoded
 * (qw_request_decode_images), and a few sampled tokens turned into text (qw_output_push),
 * with the real Qwen3 tokenizer and the 235B config at small limits.  See
 * tests/fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/request.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qw_config cfg;
static qw_tokenizer *tok;
static qw_req_ctx ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("QW_FUZZ_TOKENIZER");
	qw_err err;
	if (qw_config_load("tests/fixtures/configs/Qwen3-VL-235B-A22B-Thinking.json", &cfg,
			   &err) != QW_OK ||
	    qw_tokenizer_load(dir ? dir : "tests/fixtures/tokenizer/qwen3", &tok, &err) != QW_OK)
		abort();   /* run from the repository root */
	ctx = (qw_req_ctx){.cfg = &cfg, .tok = tok, .thinking = true, .eos = {151645, 151643},
			   .n_eos = 2, .think_start = qw_tokenizer_added_id(tok, "<think>"),
			   .think_end = qw_tokenizer_added_id(tok, "</think>"),
			   .max_context = 4096, .default_max_tokens = 16, .temperature = 1,
			   .top_p = 1, .image_limits = {1u << 20, 2048, 1 << 20},
			   .preprocess = {16384, 1 << 18, 200.0, 512}, .max_images = 4,
			   .max_image_tokens = 1024};
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	qw_request r;
	qw_err err;
	if (qw_request_decode(data, size, NULL, &r, &err) != QW_OK)
		return 0;
	qw_seq seq;
	qw_output out;
	if (r.op == QW_OP_TOKENIZE) {         /* the prompt a submit of it would get */
		int32_t *ids;
		int n;
		if (qw_request_tokenize(&ctx, &r, &ids, &n, &err) == QW_OK)
			free(ids);
	}
	if (r.op == QW_OP_SUBMIT &&
	    qw_request_prepare(&ctx, &r, 1, &seq, &out, &err) == QW_OK) {
		if (seq.n_tokens < 1 || seq.n_tokens > ctx.max_context)
			__builtin_trap();
		if (qw_request_decode_images(&ctx, &r, &seq, &err) == QW_OK)
			for (int i = 0; i < seq.n_images; i++)
				if (!seq.images[i].rgb)
					__builtin_trap();
		qw_text_buf answer = {0}, reasoning = {0};
		/* the prompt's own tokens, fed back as if sampled, until the output ends */
		for (int i = 0; i < seq.n_tokens && !qw_output_push(&out, seq.tokens[i], &answer,
								      &reasoning); i++) {
		}
		free(answer.p);
		free(reasoning.p);
		qw_request_seq_free(&seq);
		qw_output_free(&out);
	}
	qw_request_free(&r);
	return 0;
}
