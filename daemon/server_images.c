/* server_images.c - a request's images decoded and resized off the loop.  See server.h.
 *
 * A submit is prepared on the loop from its images' headers alone (sizes, token counts,
 * the prompt, positions, every limit: request.h), so a request past a limit is refused at
 * once.  Each image is then copied into a job for the pool's threads (workpool.h), which
 * decode and resize it while the loop goes on serving.  When a request's last image is
 * back it goes to the scheduler and is accepted, or it is refused if an image would not
 * decode.  A request that goes meanwhile (its client disconnected, the daemon is stopping)
 * lets go of its jobs: each is freed when it comes back.
 */
#include "daemon/server.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"

/* One image of a request, on its way through the pool.  The loop writes it before it is
 * submitted and reads it after it is taken; a pool thread touches only the encoded bytes,
 * the limits and the result in between. */
typedef struct qw_image_job {
	qw_work work;                /* first: the pool's link */
	qw_live *owner;              /* NULL once the request is gone (the loop's only) */
	int index;                   /* the image in its request */
	uint8_t *data;               /* a copy of the encoded image */
	size_t len;
	qw_image_limits limits;      /* as at the submit (SIGHUP may change the daemon's) */
	int width, height;           /* the size it is resized to, planned from its header */
	atomic_bool cancelled;       /* its request is gone: skip the work */
	/* the result */
	uint8_t *rgb;                /* (height, width, 3) */
	qw_status st;
	qw_err err;
} qw_image_job;

static void run_job(qw_work *w)
{
	qw_image_job *j = (qw_image_job *)w;
	if (atomic_load(&j->cancelled)) {
		j->st = QW_E_ARG;
		return;
	}
	j->st = qw_request_image_pixels(j->data, j->len, &j->limits, j->width, j->height, &j->rgb,
					&j->err);
}

static void free_job(qw_image_job *j)
{
	free(j->data);
	free(j->rgb);
	free(j);
}

qw_status qw_server_images_start(qw_server *sv, qw_err *err)
{
	qw_status st = qw_work_pool_init(&sv->images, (int)sv->set.image_threads, err);
	sv->have_images = st == QW_OK;
	return st;
}

bool qw_server_decode_images(qw_server *sv, qw_live *r, const qw_request *req)
{
	int n = r->seq.n_images;
	r->jobs = calloc((size_t)n, sizeof *r->jobs);
	if (!r->jobs)
		return false;
	for (int i = 0; i < n; i++) {
		const qw_item *item = qw_request_image(req, i);
		qw_image_job *j = calloc(1, sizeof *j);
		uint8_t *data = j ? malloc(item->len ? item->len : 1) : NULL;
		if (!data) {          /* none is in the pool yet */
			free(j);
			for (int k = 0; k < i; k++)
				free_job(r->jobs[k]);
			free(r->jobs);
			r->jobs = NULL;
			r->jobs_out = 0;
			return false;
		}
		memcpy(data, item->data, item->len);
		*j = (qw_image_job){.work.run = run_job, .owner = r, .index = i, .data = data,
				    .len = item->len, .limits = sv->rc.image_limits,
				    .width = r->seq.images[i].width, .height = r->seq.images[i].height};
		r->jobs[i] = j;
		r->jobs_out++;
	}
	for (int i = 0; i < n; i++)
		qw_work_pool_submit(&sv->images, &r->jobs[i]->work);
	sv->images_out += n;
	return true;
}

void qw_server_forget_images(qw_live *r)
{
	/* each job still listed is in the pool: it comes back, and is freed then */
	for (int i = 0; r->jobs && i < r->seq.n_images; i++)
		if (r->jobs[i]) {
			r->jobs[i]->owner = NULL;
			atomic_store(&r->jobs[i]->cancelled, true);
		}
	free(r->jobs);
	r->jobs = NULL;
	r->jobs_out = 0;
}

void qw_server_on_images(qw_server *sv)
{
	qw_work *w;
	while ((w = qw_work_pool_take(&sv->images))) {
		qw_image_job *j = (qw_image_job *)w;
		qw_live *r = j->owner;
		sv->images_out--;
		if (!r) {                          /* its request went meanwhile */
			free_job(j);
			continue;
		}
		r->jobs[j->index] = NULL;
		r->jobs_out--;
		if (j->st == QW_OK) {
			r->seq.images[j->index].rgb = j->rgb;
			j->rgb = NULL;
		} else if (r->image_st == QW_OK) {
			r->image_st = j->st;
			r->image_err = j->err;
			qw_err_context(&r->image_err, "image %d", j->index + 1);
		}
		free_job(j);
		if (r->jobs_out > 0)
			continue;
		free(r->jobs);
		r->jobs = NULL;
		if (r->image_st != QW_OK)
			qw_server_refuse(sv, r, qw_error_code_of(r->image_st), r->image_err.msg);
		else
			qw_server_admit(sv, r);
	}
}

void qw_server_images_stop(qw_server *sv)
{
	if (!sv->have_images)
		return;
	qw_work *w = qw_work_pool_free(&sv->images);
	while (w) {
		qw_work *next = w->next;
		qw_image_job *j = (qw_image_job *)w;
		if (j->owner) {   /* its request is still live: it must not point here */
			j->owner->jobs[j->index] = NULL;
			j->owner->jobs_out--;
		}
		free_job(j);
		w = next;
	}
	sv->have_images = false;
}

int qw_server_preparing(const qw_server *sv)
{
	int n = 0;
	for (const qw_live *r = sv->live; r; r = r->next)
		n += r->jobs_out > 0;
	return n;
}
