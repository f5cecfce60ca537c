/* dtype.c - dtype names, sizes and scalar conversions.  See dtype.h. */
#include "loader/dtype.h"

#include <math.h>
#include <string.h>

static const struct {
	const char *name;
	size_t size;
} dtype_info[QW_DT_COUNT_] = {
	[QW_DT_INVALID] = {"INVALID", 0},
	[QW_DT_BOOL] = {"BOOL", 1},       [QW_DT_U8] = {"U8", 1},
	[QW_DT_I8] = {"I8", 1},           [QW_DT_F8_E4M3] = {"F8_E4M3", 1},
	[QW_DT_F8_E5M2] = {"F8_E5M2", 1}, [QW_DT_I16] = {"I16", 2},
	[QW_DT_U16] = {"U16", 2},         [QW_DT_F16] = {"F16", 2},
	[QW_DT_BF16] = {"BF16", 2},       [QW_DT_I32] = {"I32", 4},
	[QW_DT_U32] = {"U32", 4},         [QW_DT_F32] = {"F32", 4},
	[QW_DT_I64] = {"I64", 8},         [QW_DT_U64] = {"U64", 8},
	[QW_DT_F64] = {"F64", 8},
};

qw_dtype qw_dtype_from_name(const char *name)
{
	for (int dt = 1; dt < QW_DT_COUNT_; dt++)
		if (strcmp(name, dtype_info[dt].name) == 0)
			return (qw_dtype)dt;
	return QW_DT_INVALID;
}

const char *qw_dtype_name(qw_dtype dt)
{
	return (dt > 0 && dt < QW_DT_COUNT_) ? dtype_info[dt].name : "INVALID";
}

size_t qw_dtype_size(qw_dtype dt)
{
	return (dt > 0 && dt < QW_DT_COUNT_) ? dtype_info[dt].size : 0;
}

bool qw_dtype_is_float(qw_dtype dt)
{
	return dt == QW_DT_BF16 || dt == QW_DT_F16 || dt == QW_DT_F32;
}

float qw_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

uint16_t qw_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	if ((u & 0x7fffffffu) > 0x7f800000u)        /* NaN: keep it quiet and a NaN */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);             /* round half to even */
	return (uint16_t)(u >> 16);
}

float qw_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31;
	int exp = (h >> 10) & 0x1f;
	uint32_t mant = h & 0x3ffu;
	float mag;
	if (exp == 0)
		mag = ldexpf((float)mant, -24);               /* zero and subnormals */
	else if (exp == 31)
		mag = mant ? NAN : INFINITY;
	else
		mag = ldexpf((float)(mant | 0x400u), exp - 25);
	uint32_t u;
	memcpy(&u, &mag, sizeof u);
	u |= sign;
	memcpy(&mag, &u, sizeof u);
	return mag;
}

float qw_f8e4m3_to_f32(uint8_t v)
{
	int exp = (v >> 3) & 0xf, mant = v & 7;
	float mag;
	if (exp == 15 && mant == 7)
		mag = NAN;
	else if (exp == 0)
		mag = ldexpf((float)mant, -9);                /* subnormal: mant/8 * 2^-6 */
	else
		mag = ldexpf((float)(8 + mant), exp - 10);    /* (1 + mant/8) * 2^(exp-7) */
	return (v & 0x80) ? -mag : mag;
}

uint8_t qw_f32_to_f8e4m3(float f)
{
	uint8_t sign = signbit(f) ? 0x80 : 0;
	if (isnan(f))
		return 0x7f;
	float a = fabsf(f);
	if (a >= 448.0f)
		return sign | 0x7e;                  /* saturate to the largest finite value */
	if (a < 0x1p-6f)                             /* subnormal: n * 2^-9, n = 8 the least normal */
		return sign | (uint8_t)rintf(a * 512.0f);   /* exact scaling; ties to even */
	uint32_t u;
	memcpy(&u, &a, sizeof u);
	uint32_t exp = (u >> 23) - 127 + 7, mant = (u >> 20) & 7, rest = u & 0xfffff;
	if (rest > 0x80000 || (rest == 0x80000 && (mant & 1)))
		mant++;                              /* a carry into the exponent is the next code */
	return sign | (uint8_t)((exp << 3) + mant);
}

float qw_e2m1_to_f32(uint8_t nibble)
{
	static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
	float v = mag[nibble & 7];
	return (nibble & 8) ? -v : v;
}
