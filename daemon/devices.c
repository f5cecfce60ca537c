/* devices.c - the backend and the GPUs from /proc.  See devices.h. */
#include "daemon/devices.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qw_devices_count_gpus(const char *dir)
{
	const char *visible = getenv("CUDA_VISIBLE_DEVICES");
	int n = 0;
	DIR *d = opendir(dir);
	for (struct dirent *e; d && (e = readdir(d));)
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	if (n > 0 && visible) {
		if (!visible[0] || visible[0] == '-')
			return 0;
		int listed = 1;
		for (const char *p = visible; *p; p++)
			listed += *p == ',';
		return listed;
	}
	return n;
}

const char *qw_devices_pick(const char *setting, int gpus, bool cuda_built, char *why,
			    size_t cap)
{
	if (strcmp(setting, "auto") != 0) {
		snprintf(why, cap, "device %s, as set", setting);
		return strcmp(setting, "cuda") == 0 ? "cuda" : "cpu";
	}
	if (!cuda_built)
		snprintf(why, cap, "device auto: cpu, as this build has no CUDA backend");
	else if (gpus == 0)
		snprintf(why, cap, "device auto: cpu, as no NVIDIA GPU is listed in %s",
			 QW_NVIDIA_GPUS_DIR);
	else
		snprintf(why, cap, "device auto: cuda, on the %d GPU%s the driver lists", gpus,
			 gpus == 1 ? "" : "s");
	return cuda_built && gpus > 0 ? "cuda" : "cpu";
}

qw_status qw_devices_gpus(const char *list, int n_found, int *gpu, int max, int *n,
			  qw_err *err)
{
	*n = 0;
	if (!list[0]) {
		if (n_found < 1)
			return qw_fail(err, QW_E_ARG, "device cuda: no NVIDIA GPU is listed in %s "
				       "(HINT: --gpus 0,1,... names them; --device cpu runs without)",
				       QW_NVIDIA_GPUS_DIR);
		for (int i = 0; i < n_found && i < max; i++)
			gpu[(*n)++] = i;
		return QW_OK;
	}
	for (const char *p = list; *p;) {
		char *end;
		long g = strtol(p, &end, 10);
		if (end == p || g < 0 || g > 1023 || (*end && *end != ',') || *n == max)
			return qw_fail(err, QW_E_ARG, "--gpus %s: not a list of at most %d GPU numbers "
				       "such as 0,1,2,3", list, max);
		gpu[(*n)++] = (int)g;
		p = *end ? end + 1 : end;
	}
	return QW_OK;
}
