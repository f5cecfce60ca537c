/* vision_cache.c - which images stage 0 keeps the tower's outputs of.  See vision_cache.h. */
#include "daemon/vision_cache.h"

#include <stdlib.h>
#include <string.h>

void qw_vcache_init(qw_vision_cache *c, int cap_tokens, int max_entries)
{
	memset(c, 0, sizeof *c);
	c->max_entries = max_entries > 0 ? max_entries : 0;
	c->cap_tokens = cap_tokens > 0 && c->max_entries > 0 ? cap_tokens : 0;
}

static bool full(const qw_vision_cache *c, int tokens)
{
	return c->cap_tokens - c->held_tokens < tokens || c->n >= c->max_entries;
}

void qw_vcache_free(qw_vision_cache *c)
{
	free(c->e);
	memset(c, 0, sizeof *c);
}

const qw_vcache_entry *qw_vcache_use(qw_vision_cache *c, uint64_t hash, uint64_t step)
{
	for (int i = 0; i < c->n; i++)
		if (c->e[i].hash == hash) {
			c->e[i].used = ++c->clock;
			c->e[i].last_step = step;
			c->stats.hits++;
			return &c->e[i];
		}
	return NULL;
}

static bool may_go(const qw_vcache_entry *e, uint64_t step, qw_vcache_busy_fn busy, void *ctx)
{
	return e->last_step != step && !(busy && busy(ctx, e->handle));
}

static void remove_at(qw_vision_cache *c, int i)
{
	c->held_tokens -= c->e[i].tokens;
	c->e[i] = c->e[--c->n];
}

bool qw_vcache_add(qw_vision_cache *c, uint64_t hash, uint64_t handle, int tokens, uint64_t step,
		   qw_vcache_busy_fn busy, qw_vcache_evict_fn evicted, void *ctx)
{
	if (tokens <= 0 || tokens > c->cap_tokens)
		return false;
	int room = c->cap_tokens - c->held_tokens, left = c->n;
	for (int i = 0; i < c->n; i++)
		if (may_go(&c->e[i], step, busy, ctx)) {
			room += c->e[i].tokens;
			left--;
		}
	if (room < tokens || left >= c->max_entries)
		return false;
	if (c->n == c->cap) {
		int cap = c->cap ? 2 * c->cap : 16;
		qw_vcache_entry *grown = realloc(c->e, (size_t)cap * sizeof *grown);
		if (!grown)
			return false;
		c->e = grown;
		c->cap = cap;
	}
	while (full(c, tokens)) {   /* the oldest that may go, first */
		int oldest = -1;
		for (int i = 0; i < c->n; i++)
			if (may_go(&c->e[i], step, busy, ctx) &&
			    (oldest < 0 || c->e[i].used < c->e[oldest].used))
				oldest = i;
		uint64_t gone = c->e[oldest].handle;
		remove_at(c, oldest);
		c->stats.evictions++;
		if (evicted)
			evicted(ctx, gone);
	}
	c->e[c->n++] = (qw_vcache_entry){.hash = hash, .handle = handle, .last_step = step,
					 .used = ++c->clock, .tokens = tokens};
	c->held_tokens += tokens;
	return true;
}

void qw_vcache_remove(qw_vision_cache *c, uint64_t handle)
{
	for (int i = 0; i < c->n; i++)
		if (c->e[i].handle == handle) {
			remove_at(c, i);
			return;
		}
}

void qw_vcache_clear(qw_vision_cache *c)
{
	c->n = c->held_tokens = 0;
}
