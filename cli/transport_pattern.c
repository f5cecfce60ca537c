/* transport_pattern.c - the test pattern of qwen-transport-check.  See transport_check.h. */
#include "cli/transport_check.h"

#include <string.h>

uint64_t tc_pattern_word(uint64_t seed, int stage, int iter, uint64_t i)
{
	uint64_t z = seed ^ ((uint64_t)stage << 56) ^ ((uint64_t)iter << 40) ^
		     (i * 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;      /* splitmix64's finaliser */
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void tc_make_finite(void *buf, uint64_t bytes, tc_dtype dtype)
{
	uint8_t *p = buf;
	switch (dtype) {
	case TC_FP32:
		for (uint64_t i = 0; i + 4 <= bytes; i += 4) {
			uint32_t u;
			memcpy(&u, p + i, 4);
			if (((u >> 23) & 0xff) == 0xff)
				u &= ~(1u << 30);                   /* no Inf / NaN */
			memcpy(p + i, &u, 4);
		}
		break;
	case TC_BF16:
	case TC_FP16:
		for (uint64_t i = 0; i + 2 <= bytes; i += 2) {
			uint16_t h;
			memcpy(&h, p + i, 2);
			if (dtype == TC_BF16 ? ((h >> 7) & 0xff) == 0xff : ((h >> 10) & 0x1f) == 0x1f)
				h &= (uint16_t)~(1u << 14);
			memcpy(p + i, &h, 2);
		}
		break;
	case TC_FP8:
		for (uint64_t i = 0; i < bytes; i++)
			if ((p[i] & 0x7f) == 0x7f)
				p[i] ^= 1;                          /* e4m3fn's only NaN codes */
		break;
	}
}

void tc_fill(void *buf, uint64_t bytes, tc_dtype dtype, uint64_t seed, int stage, int iter)
{
	uint8_t *p = buf;
	for (uint64_t i = 0; i * 8 < bytes; i++) {
		uint64_t w = tc_pattern_word(seed, stage, iter, i);
		uint64_t k = bytes - i * 8 < 8 ? bytes - i * 8 : 8;
		memcpy(p + i * 8, &w, k);
	}
	tc_make_finite(buf, bytes, dtype);
}
