/* openai_internal.h - (private to http/openai*.c) what the field parsers and the message
 * parser share. */
#ifndef QW_HTTP_OPENAI_INTERNAL_H
#define QW_HTTP_OPENAI_INTERNAL_H

#include "http/openai.h"

/* Zeroed storage freed with the job (NULL when out of memory). */
void *qh_job_alloc(qh_job *job, size_t bytes);
/* Hands malloc'd p to the job; false (p freed) when out of memory or p is NULL. */
bool qh_job_keep(qh_job *job, void *p);

/* obj[key], with null counted as absent. */
json_t *qh_get(const json_t *obj, const char *key);
bool qh_oom(qh_error *e);
/* Each key of obj is one of known (NULL-terminated); where names obj ("" at the top). */
bool qh_known_keys(const json_t *obj, const char *const *known, const char *where,
		   qh_error *e);
bool qh_boolean(const json_t *body, const char *key, bool *out, qh_error *e);

/* A list of token ids (non-empty, each in [0, 2^31)) into job-owned *ids. */
bool qh_token_ids(qh_job *job, const json_t *v, const char *param, int32_t **ids, int *n,
		  qh_error *e);

/* openai_messages.c: tools, tool_choice and chat_template_kwargs into r. */
bool qh_template_options(qh_job *job, const json_t *body, qw_request *r, qh_error *e);
/* body's "messages" into r's messages (images loaded through media.h). */
bool qh_messages(qh_job *job, const json_t *body, const qh_parse_opts *o, qw_request *r,
		 qh_error *e);

#endif
