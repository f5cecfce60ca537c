/* step_graphs.cu - decode steps recorded once as CUDA graphs and replayed (the op table's
 * graph_begin / graph_end): a cache of GRAPH_SLOTS executable graphs keyed by what the
 * caller's launches and the step's own depend on, the least recently used replaced.  An
 * executable graph takes device memory of the driver's when it is instantiated and
 * uploaded: each recording measures it, reserve keeps GRAPH_SLOTS of the largest free
 * (reserve.cu), and after seal a graph is recorded only while what the recordings since
 * took leaves room for one more.  See
 * backend_ctx.h and kernels/ops.h. */
#include <string.h>

#include "kernels/cuda/backend_ctx.h"
#include "kernels/cuda/check.h"

void cuda_drop_graphs(cuda_ctx *c)
{
	for (int i = 0; i < GRAPH_SLOTS; i++) {
		if (c->graphs[i].exec)
			cudaGraphExecDestroy(c->graphs[i].exec);
		c->graphs[i].exec = NULL;
		c->graphs[i].key_bytes = 0;
	}
}

qw_status cuda_graph_begin(qw_backend *be, const void *key, size_t key_bytes, bool *replayed,
			   bool *recording, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	*replayed = *recording = false;
	/* the launches also take these from the step's batch */
	const qw_cuda_batch *db = &c->db;
	const int32_t mine[] = {db->n_tokens, db->n_seqs, db->max_blocks, db->max_kv_len,
				db->max_seq_tokens, db->n_logits};
	uint8_t full[GRAPH_KEY_MAX];
	size_t n = key_bytes + sizeof mine;
	if (n > sizeof full)
		return QW_OK;   /* a key this long is not kept: the step runs plainly */
	memcpy(full, key, key_bytes);
	memcpy(full + key_bytes, mine, sizeof mine);
	uint64_t now = ++c->graph_clock;
	int slot = -1;
	for (int i = 0; i < GRAPH_SLOTS; i++) {
		step_graph *g = &c->graphs[i];
		if (g->key_bytes == n && !memcmp(g->key, full, n)) {
			g->used = now;
			if (g->exec) {
				QW_CUDA_TRY(err, cudaGraphLaunch(g->exec, c->stream));
				c->graph_stats.replayed++;
				*replayed = true;
			} else if (!g->refused && !cuda_graph_room(c)) {
				/* the memory kept for graphs is spent: this shape runs plainly */
				g->refused = true;
				c->graph_stats.over_budget++;
			} else if (!g->refused) {
				/* second sight: the first ran plainly and grew every buffer it needs */
				QW_CUDA_TRY(err, cudaStreamBeginCapture(c->stream,
									cudaStreamCaptureModeThreadLocal));
				c->recording = i;
				*recording = true;
			}
			return QW_OK;
		}
		/* a free slot, else the least recently used */
		if (slot < 0 || (c->graphs[slot].key_bytes &&
				 (!g->key_bytes || g->used < c->graphs[slot].used)))
			slot = i;
	}
	step_graph *g = &c->graphs[slot];
	if (g->exec)
		cudaGraphExecDestroy(g->exec);
	memcpy(g->key, full, n);
	g->key_bytes = n;
	g->exec = NULL;
	g->refused = false;
	g->used = now;
	return QW_OK;
}

qw_status cuda_graph_end(qw_backend *be, bool ok, bool *launched, qw_err *err)
{
	cuda_ctx *c = ctx_of(be);
	*launched = false;
	if (c->recording < 0)
		return qw_fail(err, QW_E_ARG, "cuda: cuda_graph_end without a recording");
	step_graph *g = &c->graphs[c->recording];
	c->recording = -1;
	cudaGraph_t graph = NULL;
	cudaError_t ce = cudaStreamEndCapture(c->stream, &graph);
	size_t free_before = 0, free_after = 0, total = 0;
	if (ok && ce == cudaSuccess && graph && (ce = cudaMemGetInfo(&free_before, &total)) ==
	    cudaSuccess)
		ce = cudaGraphInstantiate(&g->exec, graph, 0);
	/* the upload now, not at the first launch, so that its memory is measured with the rest */
	if (ok && ce == cudaSuccess && g->exec && (ce = cudaGraphUpload(g->exec, c->stream)) ==
	    cudaSuccess && (ce = cudaMemGetInfo(&free_after, &total)) == cudaSuccess &&
	    free_before > free_after && free_before - free_after <= GRAPH_BYTES_MAX) {
		uint64_t took = free_before - free_after;
		c->graph_each = took > c->graph_each ? took : c->graph_each;
		c->graph_used += c->sealed ? took : 0;
	}
	if (graph)
		cudaGraphDestroy(graph);
	if (!ok || ce != cudaSuccess || !g->exec) {
		cudaGetLastError();   /* a failed capture leaves no sticky error to report later */
		if (g->exec)
			cudaGraphExecDestroy(g->exec);
		g->exec = NULL;
		g->refused = true;
		c->graph_stats.refused++;
		return QW_OK;
	}
	c->graph_stats.recorded++;
	QW_CUDA_TRY(err, cudaGraphLaunch(g->exec, c->stream));
	*launched = true;
	return QW_OK;
}

extern "C" qw_cuda_graph_stats qw_cuda_backend_graph_stats(const qw_backend *be)
{
	return ((const cuda_ctx *)be->ctx)->graph_stats;
}
