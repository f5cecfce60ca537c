/* qwen-gpuinfo - the GPUs this machine offers the daemon, and the CUDA stack under it.
 *
 *   qwen-gpuinfo [--json] [--help] [--version]
 *
 * Prints driver, runtime, cuBLAS and NCCL versions, each GPU's name, compute capability,
 * SMs and memory, and the peer-access matrix (which GPU pairs can exchange activations
 * directly).  Exit 0 if at least one GPU is usable, 1 if none, 2 on bad usage.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "kernels/cuda/device_info.h"
#include "loader/version.h"
#include "loader/units.h"

static const char usage[] =
	"usage: qwen-gpuinfo [--json]\n"
	"The GPUs this machine offers qwend: the driver, runtime, cuBLAS and NCCL versions, each\n"
	"GPU's name, compute capability, SMs and memory, and which pairs have peer access.\n"
	"\n"
	"  --json         one JSON object (default: a table)\n"
	"  -h, --help     this text\n"
	"  -V, --version  the version\n"
	"exit status: 0 a GPU is usable, 1 none (or no NVIDIA driver), 2 bad usage\n";

static void print_version(const char *what, int v, int major_div, int minor_div)
{
	printf("%-8s %d.%d\n", what, v / major_div, (v % major_div) / minor_div);
}

int main(int argc, char **argv)
{
	const char *arg = argc == 2 ? argv[1] : "";
	if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
		fputs(usage, stdout);
		return 0;
	}
	if (!strcmp(arg, "--version") || !strcmp(arg, "-V")) {
		printf("qwen-gpuinfo %s\n", QW_VERSION);
		return 0;
	}
	bool json = !strcmp(arg, "--json");
	if (argc > 2 || (argc == 2 && !json)) {
		fprintf(stderr, "qwen-gpuinfo: unexpected '%s'\n%s", argc > 2 ? argv[2] : arg, usage);
		return 2;
	}
	qw_cuda_env env;
	qw_err err = {0};
	if (qw_cuda_probe(&env, &err) != QW_OK) {
		fprintf(stderr, "qwen-gpuinfo: %s\n", err.msg);
		return 1;
	}
	if (json) {
		json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:[]}", "driver", env.driver_version,
				      "runtime", env.runtime_version, "cublas", env.cublas_version,
				      "nccl", env.nccl_version, "gpus");
		for (int i = 0; i < env.n_gpus; i++) {
			const qw_gpu_info *g = &env.gpus[i];
			json_t *peers = json_array();
			for (int j = 0; j < env.n_gpus; j++)
				if (env.peer[i][j])
					json_array_append_new(peers, json_integer(j));
			char cc[16];
			snprintf(cc, sizeof cc, "%d.%d", g->cc_major, g->cc_minor);
			json_array_append_new(json_object_get(o, "gpus"),
				json_pack("{s:i, s:s, s:s, s:i, s:I, s:I, s:o}", "index", i, "name",
					  g->name, "cc", cc, "sms", g->sm_count, "total_bytes",
					  (json_int_t)g->total_bytes, "free_bytes",
					  (json_int_t)g->free_bytes, "peers", peers));
		}
		char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", text);
		free(text);
		json_decref(o);
		return env.n_gpus > 0 ? 0 : 1;
	}
	print_version("driver", env.driver_version, 1000, 10);
	print_version("runtime", env.runtime_version, 1000, 10);
	printf("%-8s %d.%d.%d\n", "cublas", env.cublas_version / 10000,
	       (env.cublas_version / 100) % 100, env.cublas_version % 100);
	printf("%-8s %d.%d.%d\n", "nccl", env.nccl_version / 10000, (env.nccl_version / 100) % 100,
	       env.nccl_version % 100);
	printf("# %3s %-28s %4s %5s %12s %12s  peers\n", "gpu", "name", "cc", "sms", "total",
	       "free");
	for (int i = 0; i < env.n_gpus; i++) {
		const qw_gpu_info *g = &env.gpus[i];
		char t[32], f[32];
		printf("  %3d %-28.28s %2d.%d %5d %12s %12s  ", i, g->name, g->cc_major, g->cc_minor,
		       g->sm_count, qw_fmt_bytes(g->total_bytes, t, sizeof t),
		       qw_fmt_bytes(g->free_bytes, f, sizeof f));
		for (int j = 0; j < env.n_gpus; j++)
			printf("%s", j == i ? "-" : env.peer[i][j] ? "P" : ".");
		printf("\n");
	}
	if (env.n_gpus == 0)
		fputs("qwen-gpuinfo: no CUDA GPU visible\n", stderr);
	return env.n_gpus > 0 ? 0 : 1;
}
